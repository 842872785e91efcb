"""``clrobust train``: an encoder under one scheme and scenario, then its classifier."""

from __future__ import annotations

import click

from clrobust.cli.options import (
    COUNT,
    COUNT0,
    EPS,
    FITTED_N,
    NONNEGATIVE,
    POSITIVE,
    data_options,
    device_option,
    join_processes,
    load_options,
    progress_option,
    seed_option,
)
from clrobust.names import ADV_METHODS, ADV_OBJECTIVES, ADV_VIEWS, AUGMENTS, DATASETS, PRESETS, SCENARIOS, SCHEMES


@click.command()
@click.option("--scheme", type=click.Choice(list(SCHEMES)), default="simclr",
              show_default=True, help="Learning scheme: SimCLR (NT-Xent), SupCon, or cross-entropy.")
@click.option("--scenario", type=click.Choice(list(SCENARIOS)), default="st", show_default=True,
              help="st: standard; at: adversarial pre-training; pat: + adversarial linear classifier "
                   "(encoder frozen); fat: + adversarial fine-tuning of encoder and classifier.")
@click.option("--adv-method", type=click.Choice(list(ADV_METHODS)), default="pgd", show_default=True,
              help="Adversarial examples for contrastive pre-training: pgd (maximise the loss between "
                   "a view and its perturbed copy) or clae (batch-wise, dual batch-norm).")
@click.option("--arch", default="resnet18", show_default=True,
              help="resnet18, resnet34, resnet50, preact-resnet18 or wrn-DEPTH-WIDEN (e.g. wrn-16-4).")
@click.option("--width", default=16, show_default=True, type=COUNT,
              help="Base (stem) width (64 = standard ResNet, 16 = standard WRN).")
@click.option("--epochs", default=20, show_default=True, type=COUNT0, help="Pre-training epochs.")
@click.option("--batch-size", default=256, show_default=True, type=COUNT)
@click.option("--lr", default=None, type=POSITIVE,
              help="Pre-training learning rate [Adam 1e-3 contrastive, SGD 0.05 supervised].")
@click.option("--temperature", default=None, type=POSITIVE,
              help="Contrastive temperature [0.5 SimCLR, 0.1 SupCon; paper preset 0.07].")
@click.option("--eps", default="8/255", show_default=True, type=EPS, help="L-inf radius of training attacks.")
@click.option("--attack-steps", default=None, type=COUNT, help="PGD steps in training [5; CLAE 1 = FGSM].")
@click.option("--attack-alpha", default=None, type=POSITIVE,
              help="Step size [max(2.5 eps/steps, 0.01); CLAE eps; paper preset 0.01].")
@click.option("--adv-view", type=click.Choice(list(ADV_VIEWS)), default="plain", show_default=True,
              help="Contrastive PGD pre-training perturbs: plain, the un-augmented image (the paper), or crop-flip, "
                   "a lightly augmented copy, each adversarial pair forwarded apart from the clean views; view: "
                   "augmented view 1, forwarded with the clean views (the recipe of clrobust before 0.3); pair: "
                   "both augmented views, perturbed together to maximise the loss between them and contrasted "
                   "as a second pair, forwarded apart (ACL's dual stream; with --dual-bn, ACL).")
@click.option("--adv-objective", type=click.Choice(list(ADV_OBJECTIVES)), default="clean+adv", show_default=True,
              help="Supervised AT, PAT and FAT train on clean + adversarial cross-entropy (the paper), or on the "
                   "adversarial examples only.")
@click.option("--dual-bn", is_flag=True,
              help="Adversarial inputs through their own batch norm (ACL); the classifier, fine-tuning and the "
                   "evaluation then read the network through it (recorded as its robust batch norm).")
@click.option("--preset", type=click.Choice(list(PRESETS)), default=None,
              help="paper: temperature 0.07, projection 100, PGD-5 with step 0.01, Adam lr 3e-4 (options given "
                   "explicitly still win).")
@click.option("--proj-dim", default=None, type=COUNT, help="Projection head output [128; paper preset 100].")
@click.option("--clae-weight", default=1.0, show_default=True, type=NONNEGATIVE,
              help="CLAE: weight of the adversarial loss.")
@click.option("--augment", type=click.Choice(list(AUGMENTS)), default=None,
              help="Pre-training views: simclr (resized crop, flip, colour jitter, grayscale) or "
                   "crop-flip (padded crop and flip) [simclr for simclr/supcon, crop-flip for supervised].")
@click.option("--classifier-epochs", default=10, show_default=True, type=COUNT0,
              help="Epochs of adversarial classifier training (pat) or fine-tuning (fat).")
@click.option("--init", default=None, help="Start from this zoo model or checkpoint's encoder (skips pre-training).")
@click.option("--init-format", default=None,
              help="How --init is read (the model options of the other commands; here --arch is the trained "
                   "architecture): force its third-party format.")
@click.option("--init-normalize", default=None, help="How --init is read: its input normalisation.")
@click.option("--init-bn", type=click.Choice(["auto", "clean", "adversarial"]), default="auto", show_default=True,
              help="How --init is read: the batch norm of a dual-BN checkpoint.")
@click.option("--init-trust-checkpoint", is_flag=True,
              help="How --init is read: allow full unpickling (only for trusted sources).")
@data_options
@click.option("--n-train", default=None, type=COUNT, help=f"Train on N of the training images: {FITTED_N} [all].")
@click.option("--eval-samples", default=None, type=COUNT, help="Test images for the final evaluation [all].")
@click.option("--eval-every", default=0, show_default=True, type=COUNT0, metavar="EPOCHS",
              help="Every EPOCHS epochs (and after the last of each phase) measure clean and robust accuracy as the "
                   "final evaluation does (PGD-20 8/255 on its images; a contrastive encoder through a linear probe "
                   "fitted on 5,000 training images), into the history and the log, to watch robust overfitting. "
                   "The training itself is unchanged, so a run may resume with another value. 0: only at the end.")
@click.option("--eval-data", type=click.Choice(list(DATASETS)), default=None,
              help="Evaluate on this data set's test split [the training data's]: e.g. cifar10-mini's exact "
                   "pixels when training on a JPEG copy of CIFAR-10.")
@click.option("--eval-data-root", type=click.Path(file_okay=False), default=None,
              help="Folder of --eval-data (as --data-root).")
@seed_option
@device_option
@click.option("--amp/--no-amp", default=None,
              help="bf16 autocast and channels-last memory for training's forward passes [on with CUDA, off on "
                   "the CPU, where a CPU with bf16 instructions (AVX512-BF16, AMX) trains about 2x faster with it "
                   "and one without them far slower (a warning says so)]; "
                   "recorded in the checkpoint's metadata and each epoch's history row.")
@click.option("--out", required=True, type=click.Path(dir_okay=False),
              help="Checkpoint path without suffix: writes OUT.safetensors, OUT.json, OUT.history.csv.")
@click.option("--resume", is_flag=True, help="Continue an interrupted run from OUT.state.pt.")
@click.option("--overwrite", is_flag=True, help="Replace an existing checkpoint at OUT.")
@progress_option
def train(scheme, scenario, adv_method, arch, width, epochs, batch_size, lr, temperature, eps, attack_steps,
          attack_alpha, adv_view, adv_objective, dual_bn, preset, proj_dim, clae_weight, augment, classifier_epochs,
          init, init_format, init_normalize, init_bn,
          init_trust_checkpoint, data_options,
          n_train, eval_samples, eval_every, eval_data, eval_data_root, seed, device, amp, out, resume, overwrite,
          progress):
    """Train an encoder under one scheme and scenario, then its linear classifier.

    Writes a safetensors checkpoint with a JSON beside it recording the settings,
    seed, versions, and clean / PGD-20 accuracy on the test split. Under
    `torchrun --nproc_per_node N` each process trains on an equal share of every
    batch (batch norm and contrastive losses see the whole batch; gradients are
    averaged), which equals one process with the whole batch.

    \b
    Examples:
      clrobust train --scheme simclr --scenario st --epochs 30 --out runs/simclr-st
      clrobust train --scheme simclr --scenario at --eps 8/255 --out runs/simclr-at
      clrobust train --scheme simclr --scenario at --adv-method clae --out runs/simclr-clae
      clrobust train --scheme simclr --scenario fat --init runs/simclr-at.safetensors --out runs/simclr-fat
      torchrun --nproc_per_node 4 -m clrobust train --scheme supervised --scenario at --out runs/sup-at
    """
    from clrobust.attacks import parse_eps
    from clrobust.checkpoints import checkpoint_target
    from clrobust.train import TrainConfig, Trainer

    if attack_steps is None:
        attack_steps = 1 if adv_method == "clae" else 5
    cfg = TrainConfig(scheme=scheme, scenario=scenario, adv_method=adv_method, arch=arch, width=width,
                      epochs=epochs, batch_size=batch_size, lr=lr, temperature=temperature, eps=parse_eps(eps),
                      attack_steps=attack_steps, attack_alpha=attack_alpha, clae_weight=clae_weight,
                      adv_view=adv_view, adv_objective=adv_objective, dual_bn=dual_bn, preset=preset,
                      proj_dim=proj_dim, eval_data=eval_data, eval_data_root=eval_data_root,
                      augment=augment, classifier_epochs=classifier_epochs, init=init, **data_options,
                      n_train=n_train, eval_samples=eval_samples, eval_every=eval_every, seed=seed, device=device,
                      amp=amp,
                      init_load=load_options(None, None, init_format, init_normalize, init_bn, False,
                                             init_trust_checkpoint).kwargs() if init else {})
    out_path = checkpoint_target(out, overwrite or resume, "--out")
    if scenario in ("pat", "fat") and init is None and scheme != "supervised":
        click.echo(f"note: no --init given, so {scenario} pre-trains adversarially first "
                   f"({epochs} epochs).", err=True)
    dist = join_processes(cfg)  # each rank on its own GPU under torchrun
    meta = Trainer(cfg, out_path, progress=progress, log=lambda m: click.echo(m, err=True),
                   dist=dist).run(resume=resume)
    if dist is not None and not dist.is_main:
        return
    m = meta["metrics"]
    click.echo(f"saved {out_path}.safetensors: clean {m['clean_accuracy']:.1%}, "
               f"PGD-20 8/255 {m['pgd20_8_255_accuracy']:.1%}, "
               f"threat model I 4/255 {m['tm1_pgd20_4_255_accuracy']:.1%} "
               f"({m['eval_samples']} test images)")
