"""``clrobust inspect`` and ``clrobust convert``: audit and convert third-party checkpoints."""

from __future__ import annotations

import json
import textwrap
from typing import TYPE_CHECKING, Any, Dict, List, Optional

import click

from clrobust.cli.options import model_options

if TYPE_CHECKING:
    from clrobust.checkpoints import LoadOptions


def _load(checkpoint: str, load_options: "LoadOptions"):
    from clrobust.checkpoints import load

    lm = load(checkpoint, **load_options.kwargs())
    return lm, lm.report


@click.command()
@click.argument("checkpoint", type=click.Path(dir_okay=False))
@model_options
@click.option("--json", "as_json", is_flag=True, help="Print everything as JSON.")
def inspect(checkpoint, load_options, as_json):
    """Show what a checkpoint is and how clrobust would load it.

    Prints the detected format, architecture, parameter count, input
    normalisation, the layers `--layers blocks` and `--layers all` record, and
    the keys dropped (projection/prediction heads), missing or unexpected.
    Files are read safely (no code runs) unless --trust-checkpoint is given.

    \b
    Examples:
      clrobust inspect last.pth
      clrobust inspect solo-learn.ckpt --json
      clrobust inspect model.pt --arch resnet50 --normalize imagenet
    """
    from clrobust.checkpoints import format_names
    from clrobust.hooks import layer_names

    lm, report = _load(checkpoint, load_options)
    net = lm.network
    info = report.to_dict()
    info["layers"] = {"blocks": layer_names(net, "blocks"), "all": layer_names(net, "all")}
    if as_json:
        click.echo(json.dumps(info, indent=2))
        return
    click.echo(_render(info))
    if report.format not in format_names() and report.format != "clrobust":
        click.echo(f"note: format {report.format!r} is not registered in this process.", err=True)


def _render(info: Dict[str, Any]) -> str:
    norm = info["normalize"]
    norm_text = "none (inputs used as they are)" if norm["mean"] is None else \
        f"mean {_nums(norm['mean'])}, std {_nums(norm['std'])}"
    bn = "dual (clean + adversarial)" if info["dual_bn"] else "single"
    if info["dual_bn"]:
        bn += ", using " + ("adversarial" if info["adversarial_bn"] else "clean")
    lines = [
        f"checkpoint     {info['path']}",
        f"format         {info['format']} ({info['source']})" + (
            f", weights under '{info['container']}'" if info["container"] else ""),
        f"architecture   {info['arch']}, width {info['width']}, stem {info['stem']}, batch norm {bn}",
        f"parameters     {info['params']:,} ({info['encoder_params']:,} in the encoder)",
        f"classifier     {str(info['num_classes']) + ' classes, from the file' if info['has_classifier'] else 'none'}",
        f"normalisation  {norm_text} [{norm['origin']}]",
        _listing("layers blocks", info["layers"]["blocks"]),
        _listing("layers all", info["layers"]["all"]),
        _listing("dropped", _grouped(info["dropped"]), count=len(info["dropped"])),
        _listing("missing", info["missing"]),
        _listing("unexpected", info["unexpected"]),
    ]
    lines += [f"note           {n}" for n in info["notes"]]
    return "\n".join(lines)


def _nums(values: List[float]) -> str:
    return "(" + ", ".join(f"{v:.4g}" for v in values) + ")"


def _grouped(keys: List[str], small: int = 4) -> List[str]:
    """Keys grouped by their first name component when a group is large, shown with the longest
    component prefix its keys share (``momentum_backbone.* (60 keys)``, ``model.sub_block1.* (25 keys)``)."""
    groups: Dict[str, List[str]] = {}
    for k in keys:
        groups.setdefault(k.split(".", 1)[0], []).append(k)
    out: List[str] = []
    for members in groups.values():
        if len(members) <= small:
            out += members
            continue
        parts = [m.split(".")[:-1] for m in members]
        common = parts[0]
        for p in parts[1:]:
            n = 0
            while n < min(len(common), len(p)) and common[n] == p[n]:
                n += 1
            common = common[:n]
        out.append(f"{'.'.join(common)}.* ({len(members)} keys)")
    return out


def _listing(title: str, names: List[str], limit: int = 400, count: Optional[int] = None) -> str:
    if not names:
        return f"{title:<14} -"
    text = ", ".join(names)
    if len(text) > limit:
        text = text[:limit].rsplit(", ", 1)[0] + ", ..."
    body = textwrap.fill(text, width=96, initial_indent=" " * 15, subsequent_indent=" " * 15).lstrip()
    return f"{title:<14} {len(names) if count is None else count}: {body}"


@click.command()
@click.argument("checkpoint", type=click.Path(dir_okay=False))
@click.argument("out", type=click.Path(dir_okay=False))
@model_options
@click.option("--overwrite", is_flag=True, help="Replace OUT if it exists.")
@click.option("--half", is_flag=True,
              help="Store the weights as float16: half the size; loading upcasts them to float32 (the zoo's "
                   "models are stored so).")
def convert(checkpoint, out, load_options, overwrite, half):
    """Convert a third-party checkpoint to clrobust's format (OUT.safetensors + OUT.json).

    A checkpoint clrobust trained keeps its training record and metrics (with --half: the zoo's storage).

    The result loads without pickle and records the source file, its detected
    format, the dropped heads and the input normalisation. Dual-BN checkpoints
    keep both batch norms: the clean one is used unless a loader asks for the
    adversarial one (clrobust.checkpoints.load(..., adversarial_bn=True)); the branch the
    conversion used (--bn, by default the authors') is the converted file's default. A head-less
    encoder stays head-less: commands fit a linear probe for it, never use a random head.

    \b
    Examples:
      clrobust convert last.pth runs/supcon-r18
      clrobust convert epoch_100.ckpt runs/advcl --arch resnet18 --normalize none
      clrobust compare-layers runs/supcon-r18.safetensors simclr-at
      clrobust convert runs/simclr-at.safetensors zoo/simclr-at --half
    """
    from clrobust.checkpoints import checkpoint_target, save_network

    target = checkpoint_target(out, overwrite)
    lm, report = _load(checkpoint, load_options)
    # What the file says about itself travels with the converted weights; a checkpoint clrobust trained keeps
    # its training record and metrics (the zoo's manifest is read from them).
    carried = {k: lm.metadata[k] for k in ("training", "metrics", "versions") if k in lm.metadata}
    meta = {**carried, "source_format": lm.source_format, "source": lm.metadata.get("source", str(checkpoint)),
            "has_classifier": lm.has_classifier, "normalize": lm.normalize,
            "robust_bn": "adversarial" if report.adversarial_bn else "clean", "load_report": report.to_dict()}
    weights = save_network(target, lm.network, meta, half=half)
    click.echo(f"saved {weights}: {report.format} {report.arch} width {report.width} stem {report.stem}, "
               f"{report.params:,} parameters, dropped {len(report.dropped)} head key(s)")
