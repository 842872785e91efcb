"""The paper's four figure families, one module each, computed through one ``compare-layers`` pass.

Families (default models are the embedded zoo; every one can be replaced):

* ``st-clean-vs-adv``: standard-trained CL, SCL, SL; CKA clean vs clean and clean vs adversarial;
* ``at-probes``: adversarially trained CL (AT, Full-AT); the same heatmaps with a linear probe per layer;
* ``eps-sweep``: disparity curves over depth for training eps 2/255, 8/255, 16/255 (and ST);
* ``cross-model``: CKA between CL and SL layers on adversarial inputs, ST pair next to AT pair.

Each figure is a :class:`FigureResult` (its numbers) that draws itself as PNG and PDF
beside its JSON; :func:`check_findings` tests the paper's four findings on them.
"""

from clrobust.figures.base import (
    FigureResult,
    FigureSettings,
    Role,
    early_mean,
    late_mean,
    off_diagonal_mean,
)
from clrobust.figures.findings import VERDICTS, Finding, FindingsResult, check_findings
from clrobust.figures.job import (
    FAMILIES,
    FAMILY_CLASSES,
    ROLES,
    FiguresOutcome,
    compute_figures,
    family_models,
    make_figures,
    parse_models,
)

__all__ = ["FAMILIES", "FAMILY_CLASSES", "ROLES", "FigureResult", "FigureSettings",
           "FiguresOutcome", "Finding", "VERDICTS", "FindingsResult", "Role", "check_findings", "compute_figures",
           "early_mean", "family_models", "late_mean", "make_figures", "off_diagonal_mean", "parse_models"]
