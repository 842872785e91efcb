"""Per-layer linear probes: known answers on synthetic features, determinism, caching, probe-layers CLI."""

import json

import numpy as np
import pytest
import torch

from clrobust.attacks import AttackSpec
from clrobust.data import load_dataset
from clrobust.probes import clear_memory_cache, fit_probe, pool_flatten, probe_layers


pytestmark = pytest.mark.usefixtures("one_thread")


def _blobs(n, k=4, d=12, seed=0, spread=0.3):
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 5, size=(k, d))
    y = rng.integers(0, k, size=n)
    return centres[y] + spread * rng.normal(size=(n, d)), y


def test_separable_classes_are_learned():
    x, y = _blobs(400)
    xt, yt = _blobs(600)[0][400:], _blobs(600)[1][400:]  # same centres, unseen points
    r = fit_probe(x, y, {"test": (xt, yt)}, n_classes=4, seed=0)
    assert r["train"] >= 0.99 and r["test"] >= 0.99


def test_shuffled_labels_give_chance():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(600, 16))
    y = rng.integers(0, 10, size=600)
    xt = rng.normal(size=(2000, 16))
    yt = rng.integers(0, 10, size=2000)
    r = fit_probe(x, y, {"test": (xt, yt)}, n_classes=10, seed=0)
    assert abs(r["test"] - 0.1) < 0.04


def test_fit_is_deterministic_given_seed():
    x, y = _blobs(300, k=3, spread=3.0)
    a = fit_probe(x, y, {"t": (x[:50], y[:50])}, seed=7)
    b = fit_probe(x, y, {"t": (x[:50], y[:50])}, seed=7)
    assert a == b


def test_constant_features_and_bad_input():
    x = np.zeros((20, 5))
    y = np.arange(20) % 2
    assert fit_probe(x, y, {}, n_classes=2)["train"] == pytest.approx(0.5)
    from clrobust.errors import ClrobustError
    with pytest.raises(ClrobustError):
        fit_probe(x, y[:10], {})


def test_pool_flatten_shapes():
    assert pool_flatten(torch.rand(3, 5, 8, 8)).shape == (3, 20)
    assert pool_flatten(torch.rand(3, 7)).shape == (3, 7)


def test_probe_layers_tiny_model_and_cache(tmp_path, tiny_checkpoints):
    from clrobust.loading import load_model

    net = load_model(str(tiny_checkpoints[0])).network
    train = load_dataset("cifar10-mini", "train").subset(40)
    test = load_dataset("cifar10-mini", "test").subset(16)
    spec = AttackSpec("pgd", 8 / 255, 1)
    clear_memory_cache()
    r = probe_layers(net, train, test, "stem,layer2.?,avgpool", spec, batch_size=8, seed=0, progress=False,
                     cache_dir=tmp_path)
    assert r.layers == ["stem", "layer2.0", "layer2.1", "avgpool"] and r.features == "computed"
    assert r.feature_dims[0] == 4 * 4 and r.feature_dims[-1] == 32  # stem 4 ch x 2x2, avgpool 32-d
    for acc in (r.train_accuracy, r.clean_accuracy, r.adversarial_accuracy):
        assert len(acc) == 4 and all(0 <= a <= 1 for a in acc)
    assert "2x2" in r.pooling and r.attack["eps_text"] == "8/255"
    again = probe_layers(net, train, test, "stem,layer2.?,avgpool", spec, 8, 0, False, tmp_path)
    assert again.features == "memory" and again.clean_accuracy == r.clean_accuracy
    clear_memory_cache()
    disk = probe_layers(net, train, test, "stem,layer2.?,avgpool", spec, 8, 0, False, tmp_path)
    assert disk.features == "disk" and disk.adversarial_accuracy == r.adversarial_accuracy
    assert len(list(tmp_path.glob("features-*.npz"))) == 1


def test_probe_layers_cli(tmp_path, tiny_checkpoints):
    from click.testing import CliRunner

    from clrobust.cli import cli

    out = tmp_path / "p"
    args = ["probe-layers", str(tiny_checkpoints[1]), "--layers", "stem,avgpool", "--n-train", "32",
            "--n-samples", "16", "--batch-size", "8", "--steps", "1", "--seed", "3", "--out", str(out),
            "--no-progress"]
    res = CliRunner().invoke(cli, args)
    assert res.exit_code == 0, res.output
    assert "avgpool" in res.output
    for name in ("probes.json", "probes.csv", "probes.png", "settings.json"):
        assert (out / name).exists(), name
    data = json.loads((out / "probes.json").read_text())
    assert data["layers"] == ["stem", "avgpool"] and data["seed"] == 3 and "torch" in data["versions"]
    assert json.loads((out / "settings.json").read_text())["seed"] == 3
    lines = (out / "probes.csv").read_text().splitlines()
    assert len(lines) == 3 and lines[0].startswith("layer_index,layer,feature_dim")
    res2 = CliRunner().invoke(cli, args)  # refused without --overwrite
    assert res2.exit_code != 0 and "--overwrite" in str(res2.exception)
    res3 = CliRunner().invoke(cli, args + ["--overwrite"])
    assert res3.exit_code == 0 and "cache" in res3.output  # in-process: memory, else disk
    assert json.loads((out / "probes.json").read_text())["clean_accuracy"] == data["clean_accuracy"]
