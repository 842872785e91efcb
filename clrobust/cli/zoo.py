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
def zoo(directory, as_json, rebuild_manifest):
    """List the embedded zoo: scheme, scenario, training eps and measured accuracy."""
    import json

    from clrobust.checkpoints import zoo as zoo_mod

    d = Path(directory) if directory else zoo_mod.zoo_dir()
    if rebuild_manifest:
        zoo_mod.rebuild_manifest(d)
    if not zoo_mod.entries(d):
        raise ClrobustError(f"the zoo in {str(d)!r} is empty (no manifest.json listing models); train it with "
                            "analyses/train_zoo.sh, or point CLROBUST_ZOO at a zoo folder.")
    if as_json:
        click.echo(json.dumps(zoo_mod.manifest(d), indent=2))
    else:
        click.echo(zoo_mod.table(zoo_mod.entries(d)))
