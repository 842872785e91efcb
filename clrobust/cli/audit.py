"""``clrobust audit``: robust-accuracy reports."""

from __future__ import annotations

from pathlib import Path

import click

from clrobust.cli.options import (
    COUNT,
    EPS_LIST,
    attack_batch_size_option,
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


@click.command()
@click.argument("models", nargs=-1, required=True)
@data_options
@click.option("--split", type=click.Choice(["train", "test"]), default="test", show_default=True)
@click.option("--eps", "eps_text", default="2/255,4/255,8/255", show_default=True, type=EPS_LIST,
              help="Comma-separated L-inf radii (8/255 or 0.0314 each); '' for none.")
@click.option("--l2-eps", "l2_text", default="", type=EPS_LIST, help="Comma-separated L2 radii, e.g. 0.5.")
@click.option("--attacks", default="fgsm,pgd20,apgd-ce,autoattack,tm1-pgd20", show_default=True,
              help="fgsm, pgd20, apgd-ce, autoattack (threat model II, end to end), pgdNxR (PGD-N with R "
                   "random restarts, robust only where all fail; pgd50x10 checks for gradient masking) and "
                   "tm1-pgd20 (threat model I: label-free representation attack, then the linear head).")
@click.option("--n-samples", default=200, show_default=True, type=COUNT, help="Test images (chosen by --sampling).")
@sampling_options
@click.option("--batch-size", default=100, show_default=True, type=COUNT)
@attack_batch_size_option
@model_options
@classifier_option
@probe_train_option()
@seed_option
@device_option
@out_options("audit-out", "a finished or different audit")
@progress_option
def audit(models, data_options,
          split, eps_text, l2_text, attacks, n_samples, batch_size,
          attack_batch_size, load_options,
          classifier, probe_train, seed, device, out, overwrite, progress):
    """Robust accuracy of one or many models, as a RobustBench-style table.

    For every model and eps: clean accuracy; FGSM, PGD-20, APGD-CE and AutoAttack
    (standard, with the reference step counts) end to end on encoder + linear head
    (threat model II), their per-point worst case, and the label-free representation
    attack (threat model I). A model without a classifier gets a linear probe fitted
    on frozen train features first. Writes report.json, report.csv, report.md,
    robust_accuracy_vs_eps.png and settings.json. Re-running the same command after an interruption
    resumes where it stopped. Runs under `torchrun --nproc_per_node N` too.

    \b
    Examples:
      clrobust audit simclr-st simclr-at --eps 8/255 --attacks pgd20,apgd-ce
      clrobust audit downloaded.pth --n-samples 846 --eps 2/255,4/255,8/255 --l2-eps 0.5
    """
    from clrobust.attacks import parse_eps_list
    from clrobust.audit import AuditSettings, run_audit
    settings = AuditSettings(models=list(models), **data_options, split=split,
                             eps=parse_eps_list(eps_text), l2_eps=parse_eps_list(l2_text, "L2"),
                             attacks=[a.strip() for a in attacks.split(",") if a.strip()], n_samples=n_samples,
                             batch_size=batch_size, attack_batch_size=attack_batch_size, seed=seed, device=device,
                             probe_train=probe_train,
                             load_options=load_options, classifier=classifier)
    dist = join_processes(settings)  # each rank on its own GPU under torchrun
    report = run_audit(settings, Path(out), overwrite=overwrite, progress=progress, dist=dist)
    if dist is None or dist.is_main:
        click.echo(report.markdown())
        click.echo(f"report in {out}/")

