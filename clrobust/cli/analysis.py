"""``clrobust probe-layers`` and ``clrobust figures``: per-layer linear probes and the paper's figures."""

from __future__ import annotations

from pathlib import Path

import click

from clrobust.cli.options import (
    COUNT,
    FITTED_N,
    attack_options,
    attack_spec,
    classifier_option,
    data_options,
    device_option,
    join_processes,
    model_options,
    out_options,
    progress_option,
    sampling_options,
    seed_option,
)
from clrobust.errors import ClrobustError
from clrobust.names import FIGURE_FAMILIES as FAMILIES


@click.command("probe-layers")
@click.argument("model")
@data_options
@click.option("--layers", default="blocks", show_default=True,
              help="blocks, all, or comma-separated glob patterns such as 'layer3.*,avgpool'.")
@attack_options
@click.option("--n-train", default=2000, show_default=True, type=COUNT,
              help=f"Train images the probes are fitted on ({FITTED_N}); also the "
                   "probe of a model without a classifier of its own.")
@click.option("--n-samples", default=512, show_default=True, type=COUNT,
              help="Test images the probes are evaluated on, clean and adversarial (chosen by --sampling).")
@sampling_options
@click.option("--batch-size", default=128, show_default=True, type=COUNT)
@model_options
@classifier_option
@seed_option
@device_option
@click.option("--cache/--no-cache", default=True, show_default=True,
              help="Keep the layer features in OUT/features/*.npz so a re-run reuses them.")
@out_options("probe-layers-out")
@progress_option
def probe_layers(model, data_options,
                 layers, attack, eps, steps, alpha, attack_batch_size, n_train, n_samples, batch_size,
                 load_options, classifier, seed, device, cache, out, overwrite, progress):
    """A linear probe at every layer of MODEL: train, clean test and adversarial test accuracy.

    MODEL is a zoo name or a checkpoint path. Every layer is recorded once per batch;
    conv maps are average pooled to 2x2 and flattened; each probe is a seeded
    multinomial logistic regression on standardised features. Under
    `torchrun --nproc_per_node N` the processes share the batches.

    \b
    Writes to --out:
      probes.json    per-layer accuracies, feature sizes, attack, seed, versions
      probes.csv     one row per layer
      probes.md      the same as a Markdown table
      probes.png     accuracy over depth (train, clean, adversarial)
      settings.json  the settings of this run
      features/      cached features (with --cache)

    \b
    Examples:
      clrobust probe-layers simclr-at
      clrobust probe-layers runs/my.safetensors --layers 'layer4.*,avgpool' --eps 4/255 --steps 20
    """
    from clrobust.probes import ProbeSettings, run_probe_layers

    settings = ProbeSettings(model=model, **data_options, layers=layers,
                             attack=attack_spec(attack, eps, steps, alpha, seed, attack_batch_size), n_train=n_train,
                             n_samples=n_samples, batch_size=batch_size, seed=seed, device=device, cache=cache,
                             load_options=load_options, classifier=classifier)
    dist = join_processes(settings)  # each rank on its own GPU under torchrun
    res = run_probe_layers(settings, Path(out), overwrite=overwrite, progress=progress, dist=dist)
    if dist is not None and not dist.is_main:
        return
    p = res.probes
    click.echo(res.summary())
    source = "computed" if p.features == "computed" else f"from the {p.features} cache"
    click.echo(f"{p.n_train} train / {p.n_test} test images, {p.attack['eps_text']} {attack}; "
               f"features {source}. Results in {out}/")


@click.command("figures")
@click.argument("family", type=click.Choice([*FAMILIES, "all"]))
@data_options
@click.option("--layers", default="blocks", show_default=True, help="blocks, all, or glob patterns.")
@attack_options
@click.option("--n-samples", default=512, show_default=True, type=COUNT, help="Test images (chosen by --sampling).")
@sampling_options
@click.option("--n-train", default=1000, show_default=True, type=COUNT,
              help="Train images for the linear probes (at-probes, and models without a classifier).")
@click.option("--batch-size", default=128, show_default=True, type=COUNT)
@click.option("--models", default=None,
              help="Replace models: NAME=PATH items (comma-separated) swap a default zoo model everywhere; "
                   "a plain comma-separated list gives one family's models in order.")
@model_options
@classifier_option
@seed_option
@device_option
@out_options("figures-out", "figures")
@click.option("--adv-source", default=None, metavar="MODEL",
              help="Craft the adversarial inputs against this model (a zoo name of the figures, e.g. simclr-st) and "
                   "feed them to every model: the titles and findings say so [each model its own].")
@click.option("--check", is_flag=True, help="Print whether the paper's findings hold in these numbers.")
@progress_option
def figures(family, data_options,
            layers, attack, eps, steps, alpha, attack_batch_size, n_samples,
            n_train, batch_size, models,
            load_options, classifier, seed, device, out, overwrite, adv_source, check,
            progress):
    """Draw the paper's figures (PNG, PDF and the numbers as JSON) into --out.
    Runs under `torchrun --nproc_per_node N` too (the processes share the batches).

    \b
    FAMILY:
      st-clean-vs-adv  simclr-st, supcon-st, supervised-st: CKA clean vs clean, clean vs adversarial
      at-probes        simclr-at, simclr-fat: the same heatmaps, with a linear probe per layer beneath
      eps-sweep        simclr-at-eps2, simclr-at, simclr-at-eps16 (+ simclr-st): disparity over depth
      cross-model      simclr vs supervised CKA on adversarial inputs, ST pair next to AT pair
      all              the four (one pass over the models)

    \b
    Examples:
      clrobust figures all --check --out docs/gallery
      clrobust figures eps-sweep --eps 4/255 --steps 20
      clrobust figures cross-model --models a.safetensors,b.safetensors,c.safetensors,d.safetensors
      clrobust figures all --models simclr-st=runs/my-st.safetensors
    """
    from clrobust.figures import FigureSettings, make_figures, parse_models

    fams = list(FAMILIES) if family == "all" else [family]
    subs, positional = parse_models(models, fams)
    if batch_size < 4:
        raise ClrobustError("--batch-size must be at least 4 (unbiased HSIC needs 4 samples per batch).")
    settings = FigureSettings(**data_options, layers=layers,
                              attack=attack_spec(attack, eps, steps, alpha, seed, attack_batch_size),
                              n_samples=n_samples,
                              n_train=n_train, batch_size=batch_size, seed=seed, device=device, models=subs,
                              positional=positional,
                              load_options=load_options, classifier=classifier, adv_source=adv_source)
    dist = join_processes(settings)  # each rank on its own GPU under torchrun
    res = make_figures(fams, settings, Path(out), overwrite=overwrite, progress=progress, check=check, dist=dist)
    if dist is not None and not dist.is_main:
        return
    for fig in res.figures.values():
        click.echo(fig.summary_line())
    for finding in res.findings:
        click.echo(finding.line())
    if res.findings:
        from clrobust.figures.findings import SCOPE

        click.echo(SCOPE)
    click.echo(f"{len(res.files)} files in {out}/")
