"""The ``clrobust`` command. It only parses options and calls the library."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import click

import clrobust
from clrobust.errors import ClrobustError


class EpsType(click.ParamType):
    """An attack radius written as 8/255 or 0.0314."""

    name = "eps"

    def convert(self, value, param, ctx):
        from clrobust.attacks import parse_eps

        if isinstance(value, float):
            return value
        try:
            return parse_eps(value)
        except ClrobustError as exc:
            self.fail(str(exc), param, ctx)


EPS = EpsType()


def seed_option(f):
    return click.option("--seed", default=0, show_default=True, type=int,
                        help="Seed for data order, augmentations and attack random starts.")(f)


def data_options(f):
    f = click.option("--data-root", type=click.Path(file_okay=False), default=None,
                     help="Folder of cifar10/cifar100 (official python format) or of an image folder.")(f)
    f = click.option("--data", default="cifar10-mini", show_default=True,
                     help="cifar10-mini (embedded), cifar10, cifar100 or imagefolder.")(f)
    return f


def progress_option(f):
    return click.option("--progress/--no-progress", default=True, show_default=True,
                        help="Show progress bars.")(f)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(clrobust.__version__, prog_name="clrobust")
def cli() -> None:
    """How adversarial training changes what an image encoder learns, layer by layer.

    Start with `clrobust compare-layers`: with no arguments it compares the embedded
    standard and adversarially trained SimCLR encoders on the embedded CIFAR-10
    subset under PGD 8/255 and writes CKA heatmaps, disparity curves and accuracies.
    """


@cli.command()
@click.option("--scheme", type=click.Choice(["simclr", "supcon", "supervised"]), default="simclr",
              show_default=True, help="Learning scheme: SimCLR (NT-Xent), SupCon, or cross-entropy.")
@click.option("--scenario", type=click.Choice(["st", "at", "pat", "fat"]), default="st", show_default=True,
              help="st: standard; at: adversarial pre-training; pat: + adversarial linear classifier "
                   "(encoder frozen); fat: + adversarial fine-tuning of encoder and classifier.")
@click.option("--adv-method", type=click.Choice(["pgd", "clae"]), default="pgd", show_default=True,
              help="Adversarial examples for contrastive pre-training: pgd (maximise the loss between "
                   "a view and its perturbed copy) or clae (batch-wise, dual batch-norm).")
@click.option("--arch", default="resnet18", show_default=True,
              help="resnet18, resnet34, resnet50, preact-resnet18 or wrn-DEPTH-WIDEN (e.g. wrn-16-4).")
@click.option("--width", default=16, show_default=True, type=int,
              help="Base (stem) width (64 = standard ResNet, 16 = standard WRN).")
@click.option("--epochs", default=20, show_default=True, type=int, help="Pre-training epochs.")
@click.option("--batch-size", default=256, show_default=True, type=int)
@click.option("--lr", default=None, type=float, help="Pre-training learning rate [Adam 1e-3 contrastive, SGD 0.05 supervised].")
@click.option("--temperature", default=None, type=float, help="Contrastive temperature [0.5 SimCLR, 0.1 SupCon].")
@click.option("--eps", default="8/255", show_default=True, type=EPS, help="L-inf radius of training attacks.")
@click.option("--attack-steps", default=None, type=int, help="PGD steps in training [5; CLAE 1 = FGSM].")
@click.option("--attack-alpha", default=None, type=float, help="Step size [max(2.5 eps/steps, 0.01); CLAE eps].")
@click.option("--clae-weight", default=1.0, show_default=True, type=float, help="CLAE: weight of the adversarial loss.")
@click.option("--augment", type=click.Choice(["simclr", "crop-flip"]), default=None,
              help="Pre-training views: simclr (resized crop, flip, colour jitter, grayscale) or "
                   "crop-flip (padded crop and flip) [simclr for simclr/supcon, crop-flip for supervised].")
@click.option("--classifier-epochs", default=10, show_default=True, type=int,
              help="Epochs of adversarial classifier training (pat) or fine-tuning (fat).")
@click.option("--init", default=None, help="Start from this zoo model or checkpoint's encoder (skips pre-training).")
@data_options
@click.option("--n-train", default=None, type=int, help="Use only the first N training images.")
@click.option("--eval-samples", default=None, type=int, help="Test images for the final evaluation [all].")
@seed_option
@click.option("--out", required=True, type=click.Path(dir_okay=False),
              help="Checkpoint path without suffix: writes OUT.safetensors, OUT.json, OUT.history.csv.")
@click.option("--resume", is_flag=True, help="Continue an interrupted run from OUT.state.pt.")
@click.option("--overwrite", is_flag=True, help="Replace an existing checkpoint at OUT.")
@progress_option
def train(scheme, scenario, adv_method, arch, width, epochs, batch_size, lr, temperature, eps, attack_steps,
          attack_alpha, clae_weight, augment, classifier_epochs, init, data, data_root, n_train, eval_samples, seed,
          out, resume, overwrite, progress):
    """Train an encoder under one scheme and scenario, then its linear classifier.

    Writes a safetensors checkpoint with a JSON beside it recording the settings,
    seed, versions, and clean / PGD-20 accuracy on the test split.

    \b
    Examples:
      clrobust train --scheme simclr --scenario st --epochs 30 --out runs/simclr-st
      clrobust train --scheme simclr --scenario at --eps 8/255 --out runs/simclr-at
      clrobust train --scheme simclr --scenario at --adv-method clae --out runs/simclr-clae
      clrobust train --scheme simclr --scenario fat --init runs/simclr-at.safetensors --out runs/simclr-fat
    """
    from clrobust.train import TrainConfig, Trainer

    if attack_steps is None:
        attack_steps = 1 if adv_method == "clae" else 5
    cfg = TrainConfig(scheme=scheme, scenario=scenario, adv_method=adv_method, arch=arch, width=width,
                      epochs=epochs, batch_size=batch_size, lr=lr, temperature=temperature, eps=eps,
                      attack_steps=attack_steps, attack_alpha=attack_alpha, clae_weight=clae_weight,
                      augment=augment, classifier_epochs=classifier_epochs, init=init, data=data, data_root=data_root,
                      n_train=n_train, eval_samples=eval_samples, seed=seed)
    out_path = Path(out)
    for suffix in (".safetensors", ".json"):
        if out_path.name.endswith(suffix):
            out_path = out_path.with_name(out_path.name[: -len(suffix)])
    target = out_path.with_name(out_path.name + ".safetensors")
    if target.exists() and not (overwrite or resume):
        raise ClrobustError(f"{str(target)!r} exists; choose another --out or pass --overwrite.")
    if scenario in ("pat", "fat") and init is None and scheme != "supervised":
        click.echo(f"note: no --init given, so {scenario} pre-trains adversarially first "
                   f"({epochs} epochs).", err=True)
    meta = Trainer(cfg, out_path, progress=progress, log=lambda m: click.echo(m, err=True)).run(resume=resume)
    m = meta["metrics"]
    click.echo(f"saved {target}: clean {m['clean_accuracy']:.1%}, PGD-20 8/255 {m['pgd20_8_255_accuracy']:.1%}, "
               f"threat model I 4/255 {m['tm1_pgd20_4_255_accuracy']:.1%} "
               f"({m['eval_samples']} test images)")


@cli.command("compare-layers")
@click.argument("models", nargs=-1)
@data_options
@click.option("--split", type=click.Choice(["train", "test"]), default="test", show_default=True)
@click.option("--layers", default="blocks", show_default=True,
              help="blocks (stem, every residual block, pooled feature), all (every conv/bn/relu/block), "
                   "or comma-separated glob patterns such as 'layer3.*,avgpool'.")
@click.option("--attack", type=click.Choice(["pgd", "fgsm", "pgd-l2", "apgd", "autoattack", "rep", "none"]),
              default="pgd", show_default=True,
              help="Attack crafted against each model: end-to-end (threat model II) or 'rep', the "
                   "label-free representation attack (threat model I).")
@click.option("--eps", default="8/255", show_default=True, help="Attack radius: 8/255 or 0.0314 (L2: 0.5).")
@click.option("--steps", default=10, show_default=True, type=int, help="Attack iterations.")
@click.option("--alpha", default=None, type=float, help="Attack step size [2.5 eps / steps].")
@click.option("--n-samples", default=512, show_default=True, type=int, help="Images to use (the first N of the split).")
@click.option("--batch-size", default=128, show_default=True, type=int,
              help="Images per batch; each batch adds one unbiased-HSIC term to minibatch CKA.")
@seed_option
@click.option("--device", default="cpu", show_default=True, help="cpu, cuda, cuda:1 ...")
@click.option("--out", default="compare-layers-out", show_default=True, type=click.Path(file_okay=False),
              help="Output folder.")
@click.option("--overwrite", is_flag=True, help="Replace results already in --out.")
@progress_option
def compare_layers(models, data, data_root, split, layers, attack, eps, steps, alpha, n_samples, batch_size,
                   seed, device, out, overwrite, progress):
    """CKA between every pair of layers, on clean and adversarial inputs.

    MODELS are zoo names (see `clrobust zoo`) or checkpoint paths; with none, the
    embedded standard (simclr-st) and adversarially trained (simclr-at) SimCLR
    encoders are compared on cifar10-mini test under PGD 8/255.

    \b
    Writes to --out:
      results.json        layers, CKA matrices, disparity, accuracy, attack, seed, versions
      cka_*.png           heatmaps: each model clean vs clean and clean vs adversarial,
                          and across models (clean vs clean, adversarial vs adversarial)
      disparity.csv/.png  1 - CKA(clean_l, adversarial_l) per layer, per model
      settings.json       the settings and versions of this run

    \b
    Examples:
      clrobust compare-layers
      clrobust compare-layers simclr-st --attack fgsm --eps 4/255 --layers all
      clrobust compare-layers my.safetensors simclr-at --n-samples 846 --out runs/cmp
    """
    from clrobust.attacks import AttackSpec, parse_eps
    from clrobust.compare import CompareSettings, compare_layers as run, summary_table
    from clrobust.zoo import DEFAULT_PAIR

    models = list(models) or list(DEFAULT_PAIR)
    norm = "L2" if attack == "pgd-l2" else "Linf"
    spec = AttackSpec(attack, parse_eps(eps, norm), steps, alpha, seed=seed)
    if batch_size < 4:
        raise ClrobustError("--batch-size must be at least 4 (unbiased HSIC needs 4 samples per batch).")
    settings = CompareSettings(models=models, data=data, data_root=data_root, split=split, layers=layers,
                               attack=spec, n_samples=n_samples, batch_size=batch_size, seed=seed, device=device)
    from clrobust.distributed import Dist

    dist = Dist.from_env(device)
    results = run(settings, Path(out), overwrite=overwrite, progress=progress, dist=dist)
    if dist is not None and not dist.is_main:
        return
    click.echo(summary_table(results))
    t = results["timings_seconds"]
    click.echo(f"{results['n_samples']} images, attack {spec.to_dict()['eps_text']} {attack}-{steps}; "
               f"time: attack {t['attack']:.1f}s, forward {t['forward']:.1f}s, CKA {t['cka']:.1f}s. "
               f"Results in {out}/")


@cli.command()
@click.option("--dir", "directory", default=None, type=click.Path(file_okay=False),
              help="Zoo folder [the repository's checkpoints/, or $CLROBUST_ZOO].")
@click.option("--json", "as_json", is_flag=True, help="Print the manifest as JSON.")
@click.option("--rebuild-manifest", is_flag=True,
              help="Rewrite manifest.json (and MANIFEST.md) from the checkpoints' metadata and sha256.")
def zoo(directory, as_json, rebuild_manifest):
    """List the embedded zoo: scheme, scenario, training eps and measured accuracy."""
    import json

    from clrobust import zoo as zoo_mod

    d = Path(directory) if directory else zoo_mod.zoo_dir()
    if rebuild_manifest:
        zoo_mod.rebuild_manifest(d)
    if as_json:
        click.echo(json.dumps(zoo_mod.manifest(d), indent=2))
    else:
        click.echo(zoo_mod.table(zoo_mod.entries(d)))


def main(argv: Optional[list] = None) -> None:
    """Entry point: user errors print one line and exit with status 2."""
    try:
        cli.main(args=argv, prog_name="clrobust", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("aborted.", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except ClrobustError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)
    except KeyboardInterrupt:
        click.echo("interrupted.", err=True)
        sys.exit(130)


def _register_optional_commands() -> None:
    """Commands that live in their own modules (kept out of this file to keep it thin)."""
    import importlib

    for module in ("clrobust.cli_checkpoints", "clrobust.cli_analysis", "clrobust.cli_audit"):
        try:
            mod = importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name == module:
                continue
            raise
        for command in getattr(mod, "COMMANDS", []):
            cli.add_command(command)


_register_optional_commands()
