"""``clrobust zoo``: the embedded models."""

from __future__ import annotations

from pathlib import Path

import click

from clrobust.errors import ClrobustError


@click.command()
@click.option("--dir", "directory", default=None, type=click.Path(file_okay=False),
              help="Zoo folder [$CLROBUST_ZOO, else the clone's checkpoints/, else the installed copy].")
@click.option("--json", "as_json", is_flag=True, help="Print the manifest as JSON.")
@click.option("--rebuild-manifest", is_flag=True,
              help="Rewrite manifest.json (and MANIFEST.md) from the checkpoints' metadata and sha256.")
@click.option("--against", "reports", multiple=True, type=click.Path(exists=True),
              help="An audit's report.json or --out folder (repeatable): print each manifest accuracy beside the "
                   "audit's measurement of it, both with 95% intervals, instead of the list.")
def zoo(directory, as_json, rebuild_manifest, reports):
    """List the embedded zoo: each model's recipe, training data, width, seed, epochs, device, training time
    and accuracies, each with its 95% interval over the evaluation images.

    \b
    Examples:
      clrobust zoo
      clrobust audit simclr-st simclr-at --n-samples 846 --sampling first --eps 4/255,8/255 \\
          --attacks pgd20,tm1-pgd20 --out audit-zoo && clrobust zoo --against audit-zoo
    """
    import json

    from clrobust.checkpoints import zoo as zoo_mod

    d = Path(directory) if directory else zoo_mod.zoo_dir()
    if rebuild_manifest:
        zoo_mod.rebuild_manifest(d)
    if not zoo_mod.entries(d):
        raise ClrobustError(f"the zoo in {str(d)!r} is empty (no manifest.json listing models); train it with "
                            "analyses/train_zoo.sh, or point CLROBUST_ZOO at a zoo folder.")
    if reports:
        checked = zoo_mod.check_against_audits(zoo_mod.entries(d), [zoo_mod.read_audit_report(Path(r))
                                                                   for r in reports])
        click.echo(json.dumps(checked, indent=2) if as_json else zoo_mod.check_table(checked))
    elif as_json:
        click.echo(json.dumps(zoo_mod.manifest(d), indent=2))
    else:
        click.echo(zoo_mod.table(zoo_mod.entries(d)))
