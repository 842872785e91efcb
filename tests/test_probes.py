"""Per-layer linear probes: known answers on synthetic features, scikit-learn as reference for the fits,
probe_layers recomputed from activations recorded here, determinism, caching, probe-layers CLI files."""

import csv
import json
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import assert_real_png, hooked_forward
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits

from clrobust.attacks import AttackSpec, attack_batch
from clrobust.data import ImageData, load_dataset, to_float
from clrobust.probes import clear_memory_cache, extract_features, fit_probe, pool_flatten, probe_layers

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


# ------------------------------------------------------------------ scikit-learn as the reference fit


def _gaussians(n: int, seed: int, scales: Sequence[float], offsets: Sequence[float],
               stretch: float = 1.0, constant: bool = True) -> Tuple[np.ndarray, np.ndarray]:
    """4 overlapping Gaussian classes (not separable, so the regularised optimum is finite and
    well conditioned), one column per scale, plus a constant column if ``constant``. ``stretch`` != 1 rescales
    and moves every column (covariate shift: a test set whose own mean and std differ from the train set's)."""
    rng = np.random.default_rng(seed)
    centres = np.random.default_rng(1234).normal(0, 1, size=(4, len(scales)))
    y = rng.integers(0, 4, size=n)
    x = (centres[y] + rng.normal(size=(n, len(scales)))) * stretch + (stretch - 1)
    x = x * np.asarray(scales) + np.asarray(offsets)
    return (np.concatenate([x, np.full((n, 1), 7.0)], axis=1) if constant else x), y


#: Columns of very different scale and offset: standardisation matters for the penalised fit.
PROBE_SCALES, PROBE_OFFSETS = (1, 10, 0.1, 100, 3, 0.5), (0, 5, -10, 300, 1, 2)


def _sklearn_logreg(x: np.ndarray, y: np.ndarray, weight_decay: float) -> LogisticRegression:
    """scikit-learn's fit of ``mean CE + weight_decay * ||W||^2`` (bias unpenalised).

    sklearn (lbfgs, multinomial) minimises ``C * sum CE + ||W||^2 / 2``: divided by ``C n`` that is
    ``mean CE + ||W||^2 / (2 C n)``, the same minimiser for ``C = 1 / (2 n weight_decay)``.
    """
    with threadpool_limits(limits=1):  # its OpenMP threads crawl on a busy machine
        return LogisticRegression(C=1.0 / (2 * len(x) * weight_decay), tol=1e-12, max_iter=10_000).fit(x, y)


def _centred(v: np.ndarray) -> np.ndarray:
    """Logit offsets are defined up to a constant shared by the classes (the bias is unpenalised)."""
    return v - v.mean(-1, keepdims=True)


def _probe_predictions(train_x: np.ndarray, train_y: np.ndarray, sets: Sequence[np.ndarray], k: int,
                       **kw) -> Tuple[Dict[str, float], List[np.ndarray]]:
    """fit_probe's result and its predicted class for every row of ``sets``, read through its public
    output: a one-row test set labelled ``c`` has accuracy 1 exactly when the probe predicts ``c``."""
    tests = {f"{j}:{i}:{c}": (x[i:i + 1], np.array([c])) for j, x in enumerate(sets) for i in range(len(x))
             for c in range(k)}
    res = fit_probe(train_x, train_y, tests, n_classes=k, **kw)
    preds = [np.full(len(x), -1) for x in sets]
    for key, acc in res.items():
        if key != "train" and acc == 1.0:
            j, i, c = map(int, key.split(":"))
            assert preds[j][i] == -1, "two predicted classes for one row"
            preds[j][i] = c
    return res, preds


@pytest.fixture
def lbfgs_runs(monkeypatch) -> List[torch.optim.Optimizer]:
    """Every torch.optim.LBFGS created during the test, so a fit's parameters can be read afterwards."""
    made: List[torch.optim.Optimizer] = []

    class Recording(torch.optim.LBFGS):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            made.append(self)

    monkeypatch.setattr(torch.optim, "LBFGS", Recording)
    return made


@pytest.mark.parametrize("weight_decay", [1e-4, 0.05])
def test_fit_probe_equals_sklearn_on_standardised_features(weight_decay, lbfgs_runs):
    x, y = _gaussians(300, 0, PROBE_SCALES, PROBE_OFFSETS)
    held_x, held_y = _gaussians(200, 1, PROBE_SCALES, PROBE_OFFSETS)
    shift_x, shift_y = _gaussians(200, 2, PROBE_SCALES, PROBE_OFFSETS, stretch=1.6)
    res, preds = _probe_predictions(x, y, [x, held_x, shift_x], 4, weight_decay=weight_decay, seed=5)
    (w, b), = [opt.param_groups[0]["params"] for opt in lbfgs_runs]

    scaler = StandardScaler().fit(x)  # train mean, population std; the constant column scaled by 1
    assert scaler.scale_[-1] == 1.0
    ref = _sklearn_logreg(scaler.transform(x), y, weight_decay)
    # The fitted parameters: the unique minimiser (bias up to a shared constant).
    scale = np.abs(ref.coef_).max()
    np.testing.assert_allclose(w.detach().numpy().T, ref.coef_, rtol=0, atol=1e-5 * scale)
    np.testing.assert_allclose(_centred(b.detach().numpy()), _centred(ref.intercept_), rtol=0, atol=1e-5 * scale)
    assert np.abs(ref.coef_[:, -1]).max() < 1e-8  # the constant feature is 0 after standardising
    # Predictions and accuracies on the train set and on held-out sets (one with shifted statistics).
    for name, p, xt in zip(("train", "held", "shifted"), preds, (x, held_x, shift_x)):
        np.testing.assert_array_equal(p, ref.predict(scaler.transform(xt)), err_msg=name)
    accs = fit_probe(x, y, {"held": (held_x, held_y), "shifted": (shift_x, shift_y)}, n_classes=4,
                     weight_decay=weight_decay, seed=5)
    assert accs == {"train": ref.score(scaler.transform(x), y), "held": ref.score(scaler.transform(held_x), held_y),
                    "shifted": ref.score(scaler.transform(shift_x), shift_y)} and res["train"] == accs["train"]
    assert 0.5 < accs["train"] < 0.95  # overlapping classes: neither chance nor separable


def test_probe_written_into_a_linear_layer_gives_the_same_scores():
    """``to_linear`` folds the standardisation into nn.Linear: same scores (float32) and predictions."""
    from clrobust.linear_probe import fit_linear_probe

    x, y = _gaussians(300, 0, PROBE_SCALES, PROBE_OFFSETS)
    held_x, _ = _gaussians(200, 1, PROBE_SCALES, PROBE_OFFSETS)
    probe = fit_linear_probe(x, y, 4, weight_decay=1e-3, seed=1)
    layer = probe.to_linear(torch.nn.Linear(x.shape[1], 4))
    for xt in (x, held_x):
        want = probe.logits(xt)
        with torch.no_grad():
            got = layer(torch.tensor(xt, dtype=torch.float32)).double()
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-3 * float(want.abs().max()))
        assert torch.equal(got.argmax(1), want.argmax(1))
    with pytest.raises(Exception, match="classifier is"):
        probe.to_linear(torch.nn.Linear(x.shape[1], 3))


def test_ensure_classifier_is_the_linear_probe_on_frozen_features():
    from conftest import tiny_network

    from clrobust.checkpoints import LoadedModel
    from clrobust.heads import ensure_classifier
    from clrobust.linear_probe import fit_linear_probe

    net = tiny_network(2)
    train = load_dataset("cifar10-mini", "train").subset(96)
    lm = LoadedModel("headless", Path("headless.safetensors"), net, has_classifier=False)
    info = ensure_classifier(lm, train, seed=0, progress=False)
    with torch.no_grad():
        feats = net.features(to_float(train.images))
    head = fit_linear_probe(feats, train.labels, 10, seed=0).to_linear(torch.nn.Linear(feats.shape[1], 10))
    assert torch.equal(net.classifier.weight, head.weight) and torch.equal(net.classifier.bias, head.bias)
    with torch.no_grad():
        acc = float((net(to_float(train.images)).argmax(1) == train.labels).float().mean())
    assert info["probe_train_accuracy"] == pytest.approx(acc) and acc > 0.2  # a fit, not the zero head
    assert info["probe_train_images"] == 96 and "linear probe" in info["classifier"]
    assert lm.has_classifier is True
    assert ensure_classifier(lm, train, progress=False) == {"classifier": "own linear head"}


# ------------------------------------------------------------------ probe_layers recomputed

LAYERS = ["stem", "layer1.1", "layer2.1", "avgpool"]


def _record_pooled(net: torch.nn.Module, layers: Sequence[str], x: torch.Tensor
                   ) -> Tuple[Dict[str, np.ndarray], torch.Tensor]:
    """``layers`` of ``net.encoder`` for one batch through plain forward hooks, conv maps average pooled to
    2x2 and flattened (vectors as they are); and the network's logits."""
    seen, logits = hooked_forward(net, x, layers)
    return {n: (F.adaptive_avg_pool2d(seen[n], (2, 2)) if seen[n].dim() == 4 else seen[n]).flatten(1).numpy()
            for n in layers}, logits


def _recorded_features(net: torch.nn.Module, data: ImageData, layers: Sequence[str], batch_size: int,
                       attack: "AttackSpec | None" = None) -> Tuple[Dict[str, np.ndarray], np.ndarray]:
    """Pooled features of ``data`` batch by batch (adversarial inputs from attack_batch with the batch's
    index when ``attack`` is given), and which of those inputs the network itself classifies right."""
    chunks: Dict[str, List[np.ndarray]] = {n: [] for n in layers}
    right: List[np.ndarray] = []
    for bi, lo in enumerate(range(0, len(data), batch_size)):
        x, y = to_float(data.images[lo:lo + batch_size]), data.labels[lo:lo + batch_size]
        if attack is not None:
            x = attack_batch(attack, net, x, y, batch_index=bi)
        feats, logits = _record_pooled(net, layers, x)
        right.append((logits.argmax(1) == y).numpy())
        for n in layers:
            chunks[n].append(feats[n])
    return {n: np.concatenate(c) for n, c in chunks.items()}, np.concatenate(right)


def test_probe_layers_equals_features_recorded_here_and_sklearn(tiny_checkpoints):
    from clrobust.checkpoints import load as load_model

    net = load_model(str(tiny_checkpoints[0])).network
    train = load_dataset("cifar10-mini", "train").subset(160)  # more points than feature dims: not separable
    test = load_dataset("cifar10-mini", "test").subset(48)
    bs = 16
    clear_memory_cache()
    r = probe_layers(net, train, test, ",".join(LAYERS), AttackSpec("pgd", 8 / 255, 2), bs, seed=0, progress=False)

    tr, _ = _recorded_features(net, train, LAYERS, bs)
    clean, clean_right = _recorded_features(net, test, LAYERS, bs)
    adv, adv_right = _recorded_features(net, test, LAYERS, bs, AttackSpec("pgd", 8 / 255, 2))
    assert r.layers == LAYERS and r.feature_dims == [tr[n].shape[1] for n in LAYERS] == [16, 16, 32, 32]
    assert (r.n_train, r.n_test) == (160, 48)
    assert r.model_accuracy == {"clean": clean_right.sum() / 48, "adversarial": adv_right.sum() / 48,
                                "robust": (clean_right & adv_right).sum() / 48}
    # What the probes were fitted on (still in the memory cache) is what was recorded here.
    feats = extract_features(net, train, test, ",".join(LAYERS), AttackSpec("pgd", 8 / 255, 2), bs, progress=False)
    assert feats.from_cache == "memory"
    for n in LAYERS:
        pairs = ((feats.train[n], tr[n]), (feats.test_clean[n], clean[n]), (feats.test_adversarial[n], adv[n]))
        for got, want in pairs:
            np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7, err_msg=n)
    np.testing.assert_array_equal(feats.train_labels, train.labels.numpy())

    # The accuracies: scikit-learn on the recorded features (count differences summed over every number).
    y_tr, y_te = train.labels.numpy(), test.labels.numpy()
    # Robust: the probe right on an image both clean and adversarial.
    off, attack_mattered, flipped_right = 0, False, False
    for i, n in enumerate(LAYERS):
        scaler = StandardScaler().fit(tr[n])
        ref = _sklearn_logreg(scaler.transform(tr[n]), y_tr, 1e-4)
        want = [ref.score(scaler.transform(f), yy) for f, yy in ((tr[n], y_tr), (clean[n], y_te), (adv[n], y_te))]
        right_clean = ref.predict(scaler.transform(clean[n])) == y_te
        right_adv = ref.predict(scaler.transform(adv[n])) == y_te
        want.append(float((right_clean & right_adv).mean()))
        got = [r.train_accuracy[i], r.clean_accuracy[i], r.adversarial_accuracy[i], r.robust_accuracy[i]]
        off += sum(round(abs(g - w) * m) for g, w, m in zip(got, want, (len(y_tr), len(y_te), len(y_te), len(y_te))))
        attack_mattered |= want[1] != want[2]
        flipped_right |= want[3] != want[2]
    assert off <= 1, (r, off)  # exact, up to one near-tie falling the other way
    assert attack_mattered  # else clean features passed off as adversarial would go unnoticed
    assert flipped_right  # some probe is right on an adversarial image it got wrong clean: robust differs
    assert r.robust_ci[0][0] <= r.robust_accuracy[0] <= r.robust_ci[0][1]


def test_probe_layers_tiny_model_and_cache(tmp_path, tiny_checkpoints):
    from clrobust.checkpoints import load as load_model

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
    from clrobust.uncertainty import wilson_interval

    for which, n in (("train", 40), ("clean", 16), ("adversarial", 16)):  # Wilson intervals of n images
        for acc, ci in zip(getattr(r, f"{which}_accuracy"), getattr(r, f"{which}_ci")):
            assert ci == pytest.approx(list(wilson_interval(round(acc * n), n))) and ci[0] <= acc <= ci[1]
    again = probe_layers(net, train, test, "stem,layer2.?,avgpool", spec, 8, 0, False, tmp_path)
    assert again.features == "memory" and again.clean_accuracy == r.clean_accuracy
    clear_memory_cache()
    disk = probe_layers(net, train, test, "stem,layer2.?,avgpool", spec, 8, 0, False, tmp_path)
    assert disk.features == "disk" and disk.adversarial_accuracy == r.adversarial_accuracy
    (cached,) = tmp_path.glob("features-*.npz")
    # Other images of the same size and split (another data root, another subset) are another key.
    other = ImageData(test.name, test.split, test.images.flip(0), test.labels.flip(0), test.classes)
    clear_memory_cache()
    assert probe_layers(net, train, other, "stem,layer2.?,avgpool", spec, 8, 0, False, tmp_path).features == "computed"
    assert len(list(tmp_path.glob("features-*.npz"))) == 2
    # A corrupt cache file is reported in one line and recomputed.
    cached.write_bytes(b"PK\x03\x04 truncated")
    clear_memory_cache()
    with pytest.warns(UserWarning, match=r"feature cache '.*' is unreadable \(.*\); recomputing it\.$"):
        fresh = probe_layers(net, train, test, "stem,layer2.?,avgpool", spec, 8, 0, False, tmp_path)
    assert fresh.features == "computed" and fresh.adversarial_accuracy == r.adversarial_accuracy


PROBE_CSV_HEADER = ["layer_index", "layer", "feature_dim", "train_accuracy", "clean_accuracy", "clean_ci_low",
                    "clean_ci_high", "adversarial_accuracy", "adversarial_ci_low", "adversarial_ci_high",
                    "robust_accuracy", "robust_ci_low", "robust_ci_high", "n_test"]
#: the header of a result written before robust accuracy was recorded
PROBE_CSV_HEADER_OLD = [c for c in PROBE_CSV_HEADER if not c.startswith("robust")]


def _assert_csv_is_json(path: Path, data: Dict) -> None:
    """probes.csv holds probes.json's per-layer numbers, row by row (accuracies to 6 decimals)."""
    with open(path, newline="") as fh:
        rows = list(csv.reader(fh))
    robust = bool(data.get("robust_accuracy"))
    header = PROBE_CSV_HEADER if robust else PROBE_CSV_HEADER_OLD
    assert rows[0] == header and len(rows) == len(data["layers"]) + 1
    for i, row in enumerate(rows[1:]):
        assert len(row) == len(header)
        assert (int(row[0]), row[1], int(row[2])) == (i, data["layers"][i], data["feature_dims"][i])
        cell = dict(zip(header, row))
        for col in ("train_accuracy", "clean_accuracy", "adversarial_accuracy") + (("robust_accuracy",) * robust):
            assert float(cell[col]) == pytest.approx(data[col][i], abs=5.1e-7), (i, col)
        for which in ("clean", "adversarial") + (("robust",) * robust):  # each accuracy's Wilson interval
            ci = data.get(f"{which}_ci") or []
            got = [cell[f"{which}_ci_low"], cell[f"{which}_ci_high"]]
            assert got == ([f"{v:.6f}" for v in ci[i]] if ci else ["", ""]), (i, which)
        assert int(cell["n_test"]) == data["n_test"]


def _assert_real_png(path: Path) -> None:
    assert_real_png(path, min_side=300, max_side=4000)


@pytest.mark.parametrize("robust", [True, False], ids=["robust", "written-before-robust"])
def test_probe_outputs_csv_and_png_hold_the_json_numbers(tmp_path, robust):
    """Every number distinct, so a shifted row or column cannot go unnoticed; a result without robust
    accuracy (written before it was recorded) still renders."""
    from clrobust.attacks import AttackSpec
    from clrobust.probes import ProbeLayersResult, ProbeResult
    from clrobust.results import write_results

    rng = np.random.default_rng(0)
    acc = rng.permutation(np.linspace(0.05, 0.95, 20)).reshape(4, 5).round(7)
    probe = ProbeResult(layers=["stem", "layer1.0", "layer2.1", "layer3.0", "avgpool"],
                        feature_dims=[16, 32, 64, 128, 256], train_accuracy=acc[0].tolist(),
                        clean_accuracy=acc[1].tolist(), adversarial_accuracy=acc[2].tolist(), n_train=64, n_test=32,
                        n_classes=10, attack=AttackSpec().to_dict(), seed=0, model_accuracy={},
                        robust_accuracy=acc[3].tolist() if robust else [],
                        robust_ci=[[a - 0.01, a + 0.01] for a in acc[3]] if robust else [])
    result = ProbeLayersResult({"label": "m"}, {"name": "cifar10-mini"}, "blocks", probe, {})
    paths = write_results(tmp_path, [result])
    assert [p.name for p in paths] == ["probes.json", "probes.csv", "probes.md", "probes.png"]
    data = json.loads((tmp_path / "probes.json").read_text())
    assert data == json.loads(json.dumps(result.to_dict())) and data["schema"] == "clrobust.probe-layers/1"
    assert ProbeLayersResult.read(tmp_path / "probes.json") == result
    md = (tmp_path / "probes.md").read_text()
    for i, layer in enumerate(probe.layers):
        row = f"| {layer} | {probe.feature_dims[i]} | {acc[0, i]:.1%} | {acc[1, i]:.1%} | {acc[2, i]:.1%} |"
        if robust:
            row += f" {acc[3, i]:.1%} [{acc[3, i] - 0.01:.1%}, {acc[3, i] + 0.01:.1%}] |"
        assert row in md
    _assert_csv_is_json(tmp_path / "probes.csv", data)
    _assert_real_png(tmp_path / "probes.png")


@pytest.mark.slow
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
    _assert_csv_is_json(out / "probes.csv", data)
    _assert_real_png(out / "probes.png")
    # The JSON's numbers are probe_layers' on the same images, attack and seed (its features still in memory).
    from clrobust.checkpoints import load as load_model

    r = probe_layers(load_model(str(tiny_checkpoints[1])).network, load_dataset("cifar10-mini", "train").subset(32),
                     load_dataset("cifar10-mini", "test").sample(16), "stem,avgpool",
                     AttackSpec("pgd", 8 / 255, 1, seed=3), 8, seed=3, progress=False)
    assert r.features == "memory"
    for key in ("train_accuracy", "clean_accuracy", "adversarial_accuracy", "feature_dims", "model_accuracy"):
        assert data[key] == getattr(r, key), key
    assert (data["n_train"], data["n_test"], data["attack"]["steps"]) == (32, 16, 1)
    res2 = CliRunner().invoke(cli, args)  # refused without --overwrite
    assert res2.exit_code != 0 and "--overwrite" in str(res2.exception)
    res3 = CliRunner().invoke(cli, args + ["--overwrite"])
    assert res3.exit_code == 0 and "cache" in res3.output  # in-process: memory, else disk
    assert json.loads((out / "probes.json").read_text())["clean_accuracy"] == data["clean_accuracy"]
