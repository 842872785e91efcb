"""``clrobust compare-layers``: the main job."""

from __future__ import annotations

from pathlib import Path

import click

from clrobust.cli.options import (
    COUNT,
    attack_options,
    attack_spec,
    bootstrap_option,
    classifier_option,
    data_options,
    device_option,
    join_processes,
    model_options,
    out_options,
    probe_train_option,
    progress_option,
    sampling_options,
    seed_option,
)
from clrobust.errors import ClrobustError
from clrobust.names import METRICS


@click.command("compare-layers")
@click.argument("models", nargs=-1)
@data_options
@click.option("--split", type=click.Choice(["train", "test"]), default="test", show_default=True)
@click.option("--layers", default="blocks", show_default=True,
              help="blocks (stem, every residual block, pooled feature), all (every conv/bn/relu/block), "
                   "or comma-separated glob patterns such as 'layer3.*,avgpool'.")
@attack_options
@click.option("--n-samples", default=512, show_default=True, type=COUNT,
              help="Images to use, chosen by --sampling.")
@sampling_options
@click.option("--batch-size", default=128, show_default=True, type=COUNT,
              help="Images per batch; each batch adds one unbiased-HSIC term to minibatch CKA.")
@click.option("--metric", type=click.Choice(list(METRICS)), default="linear-cka", show_default=True,
              help="Similarity of two recordings, layer pair by layer pair (clrobust.metrics registry).")
@model_options
@classifier_option
@probe_train_option()
@click.option("--noise-control/--no-noise-control", default=True, show_default=True,
              help="Also record random noise of the attack's eps and norm (one more forward pass): its disparity "
                   "is the baseline the attack's is read against, and the attack/noise amplification per layer.")
@click.option("--precision", type=click.Choice(["exact", "fast"]), default="exact", show_default=True,
              help="exact: CKA in float64 throughout; fast: each layer's Gram product in float32 (from features "
                   "centred in float64), everything after it in float64 (error in docs/statistics.md).")
@click.option("--cache", "cache_dir", default=None, type=click.Path(file_okay=False), metavar="DIR",
              help="Keep every batch's recordings (layer outputs, logits, inputs) in DIR and reuse them: a re-run "
                   "with other --measures, --metric, --bootstrap or --precision skips the attacks and forward "
                   "passes. Keyed by weights, layers, images, batching, attack and versions; it grows with "
                   "images x layer sizes.")
@click.option("--measures", default="", metavar="NAMES",
              help="Also compute these measures of clrobust.similarity (comma-separated: rbf-cka, procrustes, rsa, "
                   "svcca, linear-cka-unbiased ...) between each layer's clean and adversarial features, full batch "
                   "on pooled features, and report any conclusion of the main metric they reverse.")
@click.option("--adv-source", default=None, metavar="MODEL",
              help="Craft the adversarial inputs against this one of MODELS and feed them to every model "
                   "(shared inputs: cross-model comparisons see the same images) [each model its own].")
@seed_option
@bootstrap_option
@device_option
@out_options("compare-layers-out")
@progress_option
def compare_layers(models, data_options,
                   split, layers, attack, eps, steps, alpha, attack_batch_size, n_samples, batch_size,
                   metric, load_options, classifier, probe_train, noise_control, precision,
                   cache_dir,
                   measures, adv_source, seed, bootstrap, device,
                   out, overwrite, progress):
    """CKA between every pair of layers, on clean and adversarial inputs.

    MODELS are zoo names (see `clrobust zoo`) or checkpoint paths; with none, the
    embedded standard (simclr-st-s0) and adversarially trained (simclr-at-s0)
    SimCLR encoders (width-16 ResNet-18s, all 50,000 CIFAR-10 training images) are
    compared on cifar10-mini test under PGD 8/255. NAME@a,b,c
    (NAME-a, NAME-b, NAME-c) or a quoted glob names several training runs of one
    recipe: each is compared, and the group's mean, between-run SD and t-interval
    are reported.

    Every number comes with a 95% interval (a bootstrap over the images,
    --bootstrap), the images are a seeded class-stratified subset (--sampling), and
    random noise of the same eps is recorded beside the attack as its baseline.

    \b
    Writes to --out:
      results.json        layers, CKA matrices, disparity, accuracy (each with its 95% interval),
                          paired disparity differences, attack, sampling, seed, versions
      cka_*.png           heatmaps: each model clean vs clean and clean vs adversarial,
                          and across models (clean vs clean, adversarial vs adversarial)
      disparity.csv/.png  1 - CKA(clean_l, adversarial_l) per layer, per model
      summary.md          accuracy and disparity per model, as a Markdown table
      settings.json       the settings and versions of this run

    \b
    Examples:
      clrobust compare-layers
      clrobust compare-layers simclr-st --attack fgsm --eps 4/255 --layers all
      clrobust compare-layers my.safetensors simclr-at --n-samples 846 --out runs/cmp
    """
    from clrobust.checkpoints import DEFAULT_PAIR
    from clrobust.compare import CompareSettings
    from clrobust.compare import compare_layers as run

    models = list(models) or list(DEFAULT_PAIR)
    spec = attack_spec(attack, eps, steps, alpha, seed, attack_batch_size)
    if batch_size < 4:
        raise ClrobustError("--batch-size must be at least 4 (unbiased HSIC needs 4 samples per batch).")
    settings = CompareSettings(models=models, **data_options, split=split, layers=layers,
                               attack=spec, n_samples=n_samples, batch_size=batch_size, seed=seed, device=device,
                               load_options=load_options, probe_train=probe_train, metric=metric,
                               classifier=classifier,
                               bootstrap=bootstrap, noise_control=noise_control, adv_source=adv_source,
                               measures=[m.strip() for m in measures.split(",") if m.strip()], precision=precision,
                               cache=cache_dir)
    dist = join_processes(settings)  # each rank on its own GPU under torchrun
    result = run(settings, Path(out), overwrite=overwrite, progress=progress, dist=dist)
    if dist is not None and not dist.is_main:
        return
    click.echo(result.summary())
    t = result.timings_seconds
    click.echo(f"{result.n_samples} images, attack {spec.to_dict()['eps_text']} {attack}-{steps}; "
               f"time: attack {t['attack']:.1f}s, forward {t['forward']:.1f}s, CKA {t['cka']:.1f}s. "
               f"Results in {out}/")
