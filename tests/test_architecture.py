"""Dependencies point down: no module imports one from a higher floor, and no import cycle.

The floors, bottom to top (a module may import its own floor and those below):
errors -> foundations (models, data, CKA, losses, the linear probe ...) -> attacks, hooks,
checkpoints -> the activations stage and classifiers of loaded models -> jobs -> figures -> the
command line.
A new module must be given a floor here.
"""

from __future__ import annotations

import ast
import fnmatch
from pathlib import Path
from typing import Dict, List, Set

import pytest

import clrobust

PACKAGE = Path(clrobust.__file__).resolve().parent

FLOORS: List[List[str]] = [
    ["clrobust", "clrobust.errors", "clrobust.names"],
    ["clrobust.models", "clrobust.models.*", "clrobust.data", "clrobust.data.*", "clrobust.cka", "clrobust.metrics",
     "clrobust.uncertainty", "clrobust.similarity",
     "clrobust.distributed", "clrobust.plots", "clrobust.provenance", "clrobust.results", "clrobust.losses",
     "clrobust.linear_probe", "clrobust.train.augment", "clrobust.train.clock"],
    ["clrobust.attacks", "clrobust.hooks", "clrobust.checkpoints", "clrobust.checkpoints.*", "clrobust.recordings"],
    ["clrobust.activations", "clrobust.heads", "clrobust.robustness"],
    ["clrobust.compare", "clrobust.probes", "clrobust.audit", "clrobust.train", "clrobust.train.trainer"],
    ["clrobust.figures", "clrobust.figures.*"],
    ["clrobust.cli", "clrobust.cli.*", "clrobust.__main__"],
]


def _modules() -> Dict[str, Path]:
    out = {}
    for p in PACKAGE.rglob("*.py"):
        parts = ("clrobust",) + p.relative_to(PACKAGE).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = p
    return out


def _imports(path: Path, modules: Dict[str, Path]) -> Set[str]:
    """clrobust modules imported anywhere in ``path`` (function bodies included)."""
    found: Set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == "clrobust"}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "clrobust":
            subs = {f"{node.module}.{a.name}" for a in node.names} & set(modules)
            found |= subs or {node.module}  # `from pkg import submodule` depends on the submodule
    return found


def _floor(name: str) -> int:
    for i, patterns in enumerate(FLOORS):
        if any(fnmatch.fnmatchcase(name, p) for p in patterns):
            return i
    raise AssertionError(f"module {name} has no floor in tests/test_architecture.py; add it to FLOORS")


def test_no_module_imports_a_higher_floor():
    modules = _modules()
    upward = []
    for name, path in sorted(modules.items()):
        for dep in sorted(_imports(path, modules)):
            if dep != name and _floor(dep) > _floor(name):
                upward.append(f"{name} (floor {_floor(name)}) imports {dep} (floor {_floor(dep)})")
    assert not upward, "\n".join(upward)


def test_no_import_cycle():
    modules = _modules()
    graph = {n: {d for d in _imports(p, modules) if d != n and d in modules} for n, p in modules.items()}
    state: Dict[str, int] = {}
    stack: List[str] = []

    def visit(n: str) -> None:
        state[n] = 1
        stack.append(n)
        for d in sorted(graph[n]):
            if state.get(d) == 1:
                cycle = stack[stack.index(d):] + [d]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if d not in state:
                visit(d)
        stack.pop()
        state[n] = 2

    for n in sorted(graph):
        if n not in state:
            visit(n)


def test_the_checker_sees_upward_imports_and_cycles(tmp_path):
    """The checker itself: an upward import and a two-module cycle are found."""
    (tmp_path / "a.py").write_text("from clrobust.cli import main\nimport clrobust.errors\n")
    mods = {"clrobust.cli": Path("x"), "clrobust.errors": Path("y")}
    assert _imports(tmp_path / "a.py", mods) == {"clrobust.cli", "clrobust.errors"}
    assert _floor("clrobust.cli.options") > _floor("clrobust.checkpoints.table") > _floor("clrobust.errors")


@pytest.mark.slow
def test_versions_come_from_package_metadata_without_importing_the_libraries():
    """Recording versions must not import scikit-learn, kornia or torchattacks (seconds at start-up), and
    must say what those imports would say."""
    import subprocess
    import sys

    code = ("import sys; from clrobust.provenance import versions; v = versions(); "
            "print(sorted(m for m in ('sklearn', 'kornia', 'torchattacks', 'torchvision') if m in sys.modules)); "
            "import sklearn, torchattacks; print(v['sklearn'] == sklearn.__version__, "
            "v['torchattacks'] == torchattacks.__version__)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split("\n")
    assert out[0] == "[]" and out[1] == "True True", out


def test_the_command_line_starts_without_torch():
    """clrobust --help needs only the option names (clrobust.names): importing the CLI imports no torch."""
    import subprocess
    import sys

    code = "import sys, clrobust.cli; print('torch' in sys.modules, 'numpy' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "False False", out
    code = ("import sys; from clrobust.__main__ import main; main(['--help']); "
            "print('torch' in sys.modules, file=sys.stderr)")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert p.stderr.strip() == "False" and "compare-layers" in p.stdout


def test_every_offered_name_has_its_implementation():
    from clrobust import metrics, names
    from clrobust.attacks import AttackSpec
    from clrobust.data import load_dataset
    from clrobust.errors import ClrobustError
    from clrobust.figures.job import FAMILY_CLASSES
    from clrobust.heads import choose_classifier
    from clrobust.models import ModelConfig, create_model
    from clrobust.train import TrainConfig

    for a in names.ATTACKS:
        AttackSpec(a, 0.5 if a in names.L2_ATTACKS else 8 / 255)
    for d in names.DATASETS:
        try:
            load_dataset(d, "test")
        except ClrobustError as exc:
            assert "unknown data set" not in str(exc) and "--data-root" in str(exc), d
    for stem in names.STEMS:
        create_model(ModelConfig(width=4, stem=stem))
    for scheme in names.SCHEMES:
        for scenario in names.SCENARIOS:
            if (scheme, scenario) != ("supervised", "pat"):  # refused by design: no frozen encoder to probe
                TrainConfig(scheme=scheme, scenario=scenario)
    assert set(names.METRICS) <= set(metrics.METRICS) and tuple(FAMILY_CLASSES) == names.FIGURE_FAMILIES
    assert choose_classifier.__module__ == "clrobust.heads" and names.CLASSIFIER_MODES == ("auto", "probe")
