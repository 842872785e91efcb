"""The seams between commands: what a file says about itself survives convert, labels stay distinct
and file-system safe, and a mistyped model name is reported before anything about --out."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from conftest import supcontrast_file

from clrobust.checkpoints import distinct_labels, load, save_network
from clrobust.errors import ClrobustError

pytestmark = pytest.mark.usefixtures("one_thread")


def _supcontrast_file(tmp_path: Path) -> Path:
    return supcontrast_file(tmp_path / "last.pth")


def test_converted_headless_encoder_gets_a_probe_not_a_random_head(tmp_path, capsys):
    from clrobust.attacks import AttackSpec
    from clrobust.cli import main
    from clrobust.compare import CompareSettings, run_compare

    src = _supcontrast_file(tmp_path)
    direct = load(str(src))
    assert not direct.has_classifier and direct.source_format == "supcontrast"
    main(["convert", str(src), str(tmp_path / "conv")])
    conv = load(str(tmp_path / "conv.safetensors"))
    # What the file says about itself survives convert.
    assert not conv.has_classifier and conv.source_format == "supcontrast"
    assert conv.normalize["mean"] == pytest.approx(direct.normalize["mean"])
    assert conv.report.format == "clrobust" and "converted from supcontrast" in conv.report.source
    capsys.readouterr()
    main(["inspect", str(tmp_path / "conv.safetensors")])
    assert "classifier     none" in capsys.readouterr().out

    settings = CompareSettings(models=[str(tmp_path / "conv.safetensors")], attack=AttackSpec("pgd", 8 / 255, 1),
                               n_samples=16, batch_size=8)
    res = run_compare(settings, progress=False)
    info = res.models["conv"]
    assert "linear probe" in info["classifier"] and info["probe_train_accuracy"] > 0.2
    assert res.accuracy["conv"]["clean"] > 0.1


@pytest.mark.slow
def test_models_of_one_name_get_distinct_file_system_safe_labels(tmp_path, tiny_checkpoints):
    from clrobust.attacks import AttackSpec
    from clrobust.audit import AuditSettings, run_audit
    from clrobust.compare import CompareSettings, compare_layers

    other = tmp_path / "runs" / tiny_checkpoints[0].name
    other.parent.mkdir()
    shutil.copy(tiny_checkpoints[1], other)
    shutil.copy(tiny_checkpoints[1].with_suffix(".json"), other.with_suffix(".json"))
    models = [str(tiny_checkpoints[0]), str(other)]
    settings = CompareSettings(models=models, attack=AttackSpec("pgd", 8 / 255, 1), n_samples=8, batch_size=8)
    res = compare_layers(settings, tmp_path / "cmp", progress=False)
    assert res.labels == ["tiny0", "tiny0-2"]
    names = [p.name for p in (tmp_path / "cmp").iterdir()]
    assert "cka_tiny0-clean_vs_tiny0-2-clean.png" in names and not any("#" in n for n in names)
    report = run_audit(AuditSettings(models=models, eps=(8 / 255,), attacks=("fgsm",), n_samples=8,
                                     batch_size=8), tmp_path / "audit", progress=False)
    assert list(report.models) == ["tiny0", "tiny0-2"]
    assert {r.model for r in report.rows} == {"tiny0", "tiny0-2"}
    assert distinct_labels(["runs/a b", "a b", "#x", ""]) == ["runs_a_b", "a_b", "x", "model"]


def test_a_mistyped_model_name_is_reported_before_out(tmp_path):
    from clrobust.audit import AuditSettings, run_audit
    from clrobust.compare import CompareSettings, compare_layers
    from clrobust.probes import ProbeSettings, run_probe_layers

    out = tmp_path / "out"
    out.mkdir()
    for name in ("results.json", "report.json", "probes.json"):
        (out / name).write_text(json.dumps({}))
    with pytest.raises(ClrobustError, match="unknown model 'simclr-tt'"):
        compare_layers(CompareSettings(models=["simclr-tt"]), out, progress=False)
    with pytest.raises(ClrobustError, match="unknown model 'simclr-tt'"):
        run_audit(AuditSettings(models=["simclr-tt"]), out, progress=False)
    with pytest.raises(ClrobustError, match="unknown model 'simclr-tt'"):
        run_probe_layers(ProbeSettings("simclr-tt"), out, progress=False)


class _CountSamples:
    """A toy measure: how many images each layer pair has seen (every entry equals n)."""

    name = "count"
    description = "images seen per layer pair"

    def __init__(self, bootstrap=0, precision="exact") -> None:
        self.sums = None

    def prepare(self, acts):
        return [a.shape[0] for a in acts]

    def update_prepared(self, px, py, weights=None):
        batch = torch.full((len(px), len(py)), float(px[0]), dtype=torch.float64)
        self.sums = batch if self.sums is None else self.sums + batch

    def update(self, acts_x, acts_y, weights=None):
        self.update_prepared(self.prepare(acts_x), self.prepare(acts_y))

    def replicates(self):
        return None

    def state(self):
        return [self.sums]

    def ensure_state(self, rows, cols):
        if self.sums is None:
            self.sums = torch.zeros(rows, cols, dtype=torch.float64)

    def compute(self):
        return self.sums.numpy()


def test_compare_layers_takes_any_registered_metric(tiny_checkpoints, monkeypatch):
    from clrobust import metrics
    from clrobust.attacks import AttackSpec
    from clrobust.cka import StreamingCKA
    from clrobust.compare import CompareSettings, run_compare

    assert metrics.METRICS["linear-cka"] is StreamingCKA and isinstance(metrics.metric("linear-cka"), StreamingCKA)
    with pytest.raises(ClrobustError, match="unknown metric 'cca'; use one of: linear-cka"):
        metrics.metric("cca")
    monkeypatch.setitem(metrics.METRICS, "count", _CountSamples)
    res = run_compare(CompareSettings(models=[str(tiny_checkpoints[0])], attack=AttackSpec("pgd", 8 / 255, 1),
                                      n_samples=12, batch_size=8, layers="stem,avgpool", metric="count"),
                      progress=False)
    assert res.metric == "count" and res.cka_estimator == "images seen per layer pair"
    for e in res.cka:
        assert e.matrix.tolist() == [[12.0, 12.0], [12.0, 12.0]]


def test_a_head_of_another_data_set_needs_classifier_probe(tmp_path, capsys):
    """An ImageNet-sized head on CIFAR: refused with the fix named; --classifier probe fits a probe instead."""
    from clrobust.cli import main
    from clrobust.data import CIFAR10_MEAN, CIFAR10_STD
    from clrobust.models import ModelConfig, create_model

    torch.manual_seed(0)
    net = create_model(ModelConfig(arch="resnet18", width=4, num_classes=1000, mean=CIFAR10_MEAN, std=CIFAR10_STD))
    path = save_network(tmp_path / "imagenet-head", net.eval(), {})
    args = ["compare-layers", str(path), "--n-samples", "8", "--batch-size", "8", "--steps", "1",
            "--probe-train", "64", "--no-progress", "--layers", "stem,avgpool"]
    with pytest.raises(SystemExit) as info:
        main(args + ["--out", str(tmp_path / "a")])
    err = capsys.readouterr().err
    assert info.value.code == 2 and "1000-class head" in err and "--classifier probe" in err
    main(args + ["--out", str(tmp_path / "b"), "--classifier", "probe"])
    out = capsys.readouterr().out
    res = json.loads((tmp_path / "b" / "results.json").read_text())
    info = res["models"]["imagenet-head"]
    assert "linear probe fitted on 64" in info["classifier"] and 0 < info["probe_train_accuracy"] <= 1
    assert "imagenet-head: classifier is a linear probe fitted on 64 frozen train features" in out
    settings = json.loads((tmp_path / "b" / "settings.json").read_text())["command"]
    assert settings["classifier"] == "probe" and settings["probe_train"] == 64


def test_drawing_leaves_the_users_matplotlib_backend_alone(tmp_path):
    import matplotlib
    import numpy as np

    from clrobust import plots

    before = matplotlib.get_backend()
    matplotlib.use("svg")  # as a user's notebook or script might have chosen
    try:
        plots.save_heatmap(tmp_path / "h.png", np.eye(3), ["a", "b", "c"], ["a", "b", "c"], "t")
        plots.save_disparity(tmp_path / "d.png", {"m": [0.1, 0.2, 0.3]}, {"m": ["a", "b", "c"]}, "t")
        assert matplotlib.get_backend() == "svg"
        assert (tmp_path / "h.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and (tmp_path / "d.png").stat().st_size
    finally:
        matplotlib.use(before)


@pytest.mark.slow
def test_train_init_reads_a_third_party_file_with_the_init_options(tmp_path):
    """`train --init FILE` goes through the one door: a SupContrast file, its format and normalisation given."""
    from clrobust.checkpoints.native import read_metadata
    from clrobust.cli import main

    src = _supcontrast_file(tmp_path)
    out = tmp_path / "fat"
    main(["train", "--scheme", "simclr", "--scenario", "fat", "--init", str(src), "--init-format", "supcontrast",
          "--init-normalize", "half", "--n-train", "32", "--batch-size", "16", "--classifier-epochs", "1",
          "--eval-samples", "8", "--attack-steps", "1", "--no-progress", "--out", str(out)])
    meta = read_metadata(out.with_suffix(".safetensors"))
    assert meta["training"]["init_load"]["format"] == "supcontrast"
    assert meta["training"]["init_load"]["normalize"] == "half"
    trained = load(str(out.with_suffix(".safetensors")))
    assert trained.network.normalize.mean.flatten().tolist() == pytest.approx([0.5] * 3)
    assert trained.network.config.arch == "resnet18" and trained.network.config.width == 4


@pytest.mark.parametrize("command,module,attr", [
    (["compare-layers", "simclr-st"], "clrobust.compare", "compare_layers"),
    (["audit", "simclr-st"], "clrobust.audit", "run_audit"),
    (["probe-layers", "simclr-st"], "clrobust.probes", "run_probe_layers"),
    (["figures", "eps-sweep"], "clrobust.figures", "make_figures"),
    (["train"], "clrobust.train", "Trainer"),
])
def test_every_data_option_reaches_the_settings(tmp_path, monkeypatch, command, module, attr):
    """The data options (and the sampling options, where a command has them) are declared once and reach
    every command's settings, the fields settings.json records."""
    import importlib

    from clrobust.cli import cli
    from clrobust.data import DataOptions, SampledDataOptions, data_fields

    class Seen(Exception):
        pass

    def spy(*args, **kwargs):
        raise Seen(next(a for a in args if isinstance(a, DataOptions)))

    monkeypatch.setattr(importlib.import_module(module), attr, spy)
    given = {"data": "imagefolder", "data_root": str(tmp_path), "skip_bad_images": True, "image_size": 40,
             "resize": 45}
    args = ["--data", "imagefolder", "--data-root", str(tmp_path), "--skip-bad-images", "--image-size", "40",
            "--resize", "45", "--out", str(tmp_path / "out")]
    if command[0] != "train":
        given.update(sampling="first", sample_seed=7)
        args += ["--sampling", "first", "--sample-seed", "7"]
    with pytest.raises(Seen) as seen:
        cli.main(args=command + args, standalone_mode=False)
    settings = seen.value.args[0]
    assert isinstance(settings, SampledDataOptions) == (command[0] != "train")
    assert data_fields(settings) == given
    if hasattr(settings, "to_dict"):
        assert {k: settings.to_dict()[k] for k in given} == given
