"""compare-layers end to end on tiny checkpoints, and its one-line errors (exit 2)."""

import csv
import json
import subprocess
import sys

import numpy as np
import pytest
from conftest import assert_real_png, hooked_forward

from clrobust.errors import ClrobustError


def run(args):
    """Invoke the real entry point (with its error handling); returns (exit code, output)."""
    p = subprocess.run([sys.executable, "-m", "clrobust", *args], capture_output=True, text=True)
    return p.returncode, p.stdout + p.stderr


@pytest.mark.slow
def test_compare_layers_outputs(tmp_path, tiny_checkpoints):
    a, b = map(str, tiny_checkpoints)
    out = tmp_path / "out"
    code, text = run(["compare-layers", a, b, "--n-samples", "24", "--batch-size", "8", "--steps", "2",
                      "--out", str(out), "--no-progress"])
    assert code == 0, text
    assert "tiny0" in text and "clean acc" in text
    res = json.loads((out / "results.json").read_text())
    assert set(res["layers"]) == {"tiny0", "tiny1"} and res["n_samples"] == 24 and res["seed"] == 0
    assert res["attack"]["eps_text"] == "8/255" and "torch" in res["versions"]
    pairs = {(e["rows"]["model"], e["rows"]["input"], e["cols"]["model"], e["cols"]["input"]) for e in res["cka"]}
    assert pairs == {("tiny0", "clean", "tiny0", "clean"), ("tiny0", "clean", "tiny0", "adversarial"),
                     ("tiny1", "clean", "tiny1", "clean"), ("tiny1", "clean", "tiny1", "adversarial"),
                     ("tiny0", "clean", "tiny1", "clean"), ("tiny0", "adversarial", "tiny1", "adversarial"),
                     ("tiny0", "clean", "tiny0", "noise"), ("tiny1", "clean", "tiny1", "noise")}  # the control
    for e in res["cka"]:
        m = np.asarray(e["matrix"])
        assert m.shape == (10, 10)
        assert (m > -0.2).all() and (m < 1 + 1e-6).all()  # unbiased CKA dips below 0 near independence
        if e["rows"] == e["cols"]:
            np.testing.assert_allclose(np.diag(m), 1.0, atol=1e-6)
    ent = next(e for e in res["cka"] if e["rows"] == {"model": "tiny0", "input": "clean"}
               and e["cols"] == {"model": "tiny0", "input": "adversarial"})
    np.testing.assert_allclose(res["disparity"]["tiny0"], 1 - np.diag(ent["matrix"]), atol=1e-12)
    assert max(res["disparity"]["tiny0"]) > 0  # adversarial inputs really differ
    # Every file says what results.json says.
    with open(out / "disparity.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 2 * 10
    for r in rows:
        i, lab = int(r["layer_index"]), r["model"]
        assert r["layer"] == res["layers"][lab][i]
        assert float(r["disparity"]) == pytest.approx(res["disparity"][lab][i], abs=1e-8)
        assert float(r["cka_clean_adversarial"]) == pytest.approx(1 - res["disparity"][lab][i], abs=1e-8)
    settings = json.loads((out / "settings.json").read_text())
    assert settings["seed"] == 0 and settings["command"]["n_samples"] == 24
    assert settings["command"]["attack"]["steps"] == 2 and settings["command"]["models"] == [a, b]
    names = {f"cka_{r}_vs_{c}.png" for r, c in (("tiny0-clean", "tiny0-clean"), ("tiny0-clean", "tiny0-adv"),
                                                ("tiny1-clean", "tiny1-clean"), ("tiny1-clean", "tiny1-adv"),
                                                ("tiny0-clean", "tiny1-clean"), ("tiny0-adv", "tiny1-adv"))}
    assert {p.name for p in out.glob("cka_*.png")} == names
    for name in sorted(names) + ["disparity.png"]:
        _assert_picture(out / name)
    acc = res["accuracy"]["tiny0"]
    assert 0 <= acc["adversarial"] <= acc["clean"] <= 1

    # The same run again is refused, then allowed with --overwrite and reproduces the numbers.
    code, text = run(["compare-layers", a, b, "--n-samples", "24", "--batch-size", "8", "--steps", "2",
                      "--out", str(out), "--no-progress"])
    assert code == 2 and "--overwrite" in text and "Traceback" not in text
    code, _ = run(["compare-layers", a, b, "--n-samples", "24", "--batch-size", "8", "--steps", "2",
                   "--out", str(out), "--no-progress", "--overwrite"])
    again = json.loads((out / "results.json").read_text())
    assert code == 0 and again["cka"] == res["cka"]


@pytest.mark.slow
def _assert_picture(path):
    """A real figure: a sensible size and more than a blank canvas."""
    assert_real_png(path, min_side=200, min_colours=21, ink=False)


@pytest.mark.slow
def test_bad_input_exits_2_with_one_line(tmp_path, tiny_checkpoints):
    a = str(tiny_checkpoints[0])
    corrupt = tmp_path / "corrupt.safetensors"
    corrupt.write_bytes(b"<html>not a checkpoint</html>")
    cases = [
        (["compare-layers", str(tmp_path / "missing.safetensors")], "not found"),
        (["compare-layers", str(corrupt)], "corrupt"),
        (["compare-layers", "no-such-zoo-model"], "unknown model"),
        (["compare-layers", a, "--layers", "layer9.*"], "valid names"),
        (["compare-layers", a, "--eps", "8"], "8/255"),
        (["compare-layers", a, "--eps", "abc"], "bad eps"),
        (["compare-layers", a, "--data", "imagenet"], "unknown data set"),
    ]
    for args, message in cases:
        code, text = run(args + ["--out", str(tmp_path / "o"), "--no-progress"])
        assert code == 2, (args, text)
        assert message in text and "Traceback" not in text, (args, text)
        assert len(text.strip().splitlines()) == 1, text
    assert not (tmp_path / "o" / "results.json").exists()


# ----------------------------------------------------------------------------- independent recount, in process

BLOCKS = ["stem"] + [f"layer{i}.{j}" for i in range(1, 5) for j in range(2)] + ["avgpool"]


def _hsic_unbiased(k: np.ndarray, l: np.ndarray) -> float:
    """Song et al. (2012), the formula as written, float64."""
    n = k.shape[0]
    kt, lt = k.copy(), l.copy()
    np.fill_diagonal(kt, 0)
    np.fill_diagonal(lt, 0)
    one = np.ones(n)
    return float((np.trace(kt @ lt) + (one @ kt @ one) * (one @ lt @ one) / ((n - 1) * (n - 2))
                  - 2 / (n - 2) * one @ kt @ lt @ one) / (n * (n - 3)))


def _minibatch_cka(xs, ys) -> float:
    """Minibatch CKA: unbiased HSIC summed over the batches (Nguyen, Raghu & Kornblith 2021)."""
    kl = kk = ll = 0.0
    for x, y in zip(xs, ys):
        k, l = x @ x.T, y @ y.T
        kl, kk, ll = kl + _hsic_unbiased(k, l), kk + _hsic_unbiased(k, k), ll + _hsic_unbiased(l, l)
    return kl / np.sqrt(kk * ll)


def _record(net, x, names):
    """Every named encoder module's output on ``x``, through hooks written here, as float64 (N, D) arrays."""
    out, logits = hooked_forward(net, x, names)
    return {n: out[n].reshape(len(x), -1).double().numpy() for n in names}, logits


def test_every_model_is_attacked_with_its_own_examples(tiny_checkpoints, trained_checkpoint, one_thread):
    """Accuracy, disparity and CKA of compare-layers recomputed here from attack_batch and hooks of our own.

    The untrained model comes first: examples crafted against it barely move the trained
    model, so crafting every model's examples against the first one cannot pass.
    """
    from clrobust.attacks import AttackSpec, attack_batch, noise_batch
    from clrobust.checkpoints import load as load_model
    from clrobust.compare import CompareSettings, run_compare
    from clrobust.data import load_dataset, to_float

    models = [str(tiny_checkpoints[0]), str(trained_checkpoint)]
    spec = AttackSpec("pgd", 4 / 255, steps=3, seed=5)
    settings = CompareSettings(models=models, attack=spec, n_samples=34, batch_size=16, seed=5)
    res = run_compare(settings, progress=False)

    data = load_dataset("cifar10-mini", "test").sample(34)  # the default stratified subset
    bounds = [(0, 16), (16, 34)]  # a tail of 2 images is folded into the batch before it
    assert res.batches == 2 and res.n_samples == 34
    recs = {}
    for label, path in zip(("tiny0", "trained"), models):
        net = load_model(path).network
        correct = {"clean": 0, "adversarial": 0, "robust": 0}
        acts = {"clean": [], "adversarial": [], "noise": []}
        gain = {"adversarial": np.zeros(len(BLOCKS)), "noise": np.zeros(len(BLOCKS))}
        for bi, (lo, hi) in enumerate(bounds):
            x, y = to_float(data.images[lo:hi]), data.labels[lo:hi]
            x_adv = attack_batch(AttackSpec("pgd", 4 / 255, steps=3, seed=5), net, x, y, batch_index=bi)
            x_noise = noise_batch(4 / 255, "Linf", x, 5, bi)  # the control: random signs at the same eps
            right = {}
            for inp, xi in (("clean", x), ("adversarial", x_adv), ("noise", x_noise)):
                a, logits = _record(net, xi, BLOCKS)
                acts[inp].append(a)
                right[inp] = logits.argmax(1) == y
                if inp in correct:
                    correct[inp] += int(right[inp].sum())
                if inp != "clean":  # feature change per unit of input change, summed over images
                    moved = (xi - x).flatten(1).norm(dim=1).double().numpy()
                    gain[inp] += [float((np.linalg.norm((np.asarray(a[n]) - np.asarray(acts["clean"][-1][n]))
                                                        .reshape(len(x), -1), axis=1) / moved).sum()) for n in BLOCKS]
            correct["robust"] += int((right["clean"] & right["adversarial"]).sum())  # right both clean and attacked
        assert {k: res.accuracy[label][k] for k in correct} == {k: v / 34 for k, v in correct.items()}, label
        expect = [1 - _minibatch_cka([b[n] for b in acts["clean"]], [b[n] for b in acts["adversarial"]])
                  for n in BLOCKS]
        np.testing.assert_allclose(res.disparity[label], expect, rtol=0, atol=1e-9)
        control = [1 - _minibatch_cka([b[n] for b in acts["clean"]], [b[n] for b in acts["noise"]]) for n in BLOCKS]
        np.testing.assert_allclose(res.noise_disparity[label], control, rtol=0, atol=1e-9)
        amplification = gain["adversarial"] / gain["noise"]
        np.testing.assert_allclose(res.amplification[label]["ratio"], amplification, rtol=1e-6)  # float32 norms
        recs[label] = acts
    trained = res.accuracy["trained"]
    assert trained["clean"] > 0.2 and 0 < trained["adversarial"] < trained["clean"]  # non-trivial counts
    assert 0 < trained["robust"] <= trained["adversarial"]
    # One cross-model entry on adversarial inputs: each model's own adversarial activations.
    ent = next(e for e in res.cka if e.rows == ("tiny0", "adversarial") and e.cols == ("trained", "adversarial"))
    for i, j in ((0, 0), (4, 9), (9, 9)):
        want = _minibatch_cka([b[BLOCKS[i]] for b in recs["tiny0"]["adversarial"]],
                              [b[BLOCKS[j]] for b in recs["trained"]["adversarial"]])
        assert ent.matrix[i, j] == pytest.approx(want, abs=1e-9)


def test_result_files_name_their_schema(tmp_path, tiny_checkpoints):
    """Every result file says which layout it has, reads back into the same typed result, and a reader
    refuses a file of another job."""
    from clrobust.attacks import AttackSpec
    from clrobust.audit import AuditResult, AuditSettings, run_audit
    from clrobust.compare import CompareResult, CompareSettings, compare_layers

    res = compare_layers(CompareSettings(models=[str(tiny_checkpoints[0])], attack=AttackSpec("fgsm", 8 / 255, 1),
                                         n_samples=8, batch_size=8, layers="stem,avgpool"),
                         tmp_path / "c", progress=False)
    on_disk = json.loads((tmp_path / "c" / "results.json").read_text())
    assert on_disk["schema"] == res.to_dict()["schema"] == "clrobust.compare-layers/1"
    back = CompareResult.read(tmp_path / "c" / "results.json")
    assert json.loads(json.dumps(back.to_dict())) == on_disk
    np.testing.assert_array_equal(back.matrix(("tiny0", "clean"), ("tiny0", "adversarial")),
                                  res.matrix(("tiny0", "adversarial"), ("tiny0", "clean")).T)
    md = (tmp_path / "c" / "summary.md").read_text()
    assert "| tiny0 | " in md and f"{res.accuracy['tiny0']['clean']:.1%}" in md
    report = run_audit(AuditSettings(models=[str(tiny_checkpoints[0])], eps=(8 / 255,), attacks=("fgsm",),
                                     n_samples=8, batch_size=8), tmp_path / "a", progress=False)
    assert json.loads((tmp_path / "a" / "report.json").read_text())["schema"] == "clrobust.audit/1"
    assert AuditResult.read(tmp_path / "a" / "report.json").to_dict() == json.loads(json.dumps(report.to_dict()))
    with pytest.raises(ClrobustError, match="has schema 'clrobust.audit/1', not 'clrobust.compare-layers/1'"):
        CompareResult.read(tmp_path / "a" / "report.json")


def test_every_number_carries_its_interval(tmp_path, tiny_checkpoints):
    """CKA entries, disparity (per layer and late mean), accuracies and the paired difference come with 95%
    intervals that hold their value; CSV and summary carry them; --bootstrap 0 turns them off."""
    import csv

    from clrobust.attacks import AttackSpec
    from clrobust.compare import CompareResult, CompareSettings, compare_layers
    from clrobust.uncertainty import wilson_interval

    models = [str(p) for p in tiny_checkpoints]
    settings = CompareSettings(models=models, attack=AttackSpec("pgd", 8 / 255, 2), n_samples=40, batch_size=20,
                               layers="stem,layer2.1,avgpool", bootstrap=200, seed=1)
    res = compare_layers(settings, tmp_path / "out", progress=False)
    back = CompareResult.read(tmp_path / "out" / "results.json")
    for e in back.cka:
        assert e.ci_low is not None and e.ci_high is not None
        assert np.all(e.ci_low <= e.matrix + 1e-12) and np.all(e.matrix <= e.ci_high + 1e-12)
    for lab in res.labels:
        d, ci = np.array(res.disparity[lab]), res.disparity_ci[lab]
        cka = res.matrix((lab, "clean"), (lab, "adversarial"))
        entry = next(e for e in res.cka if e.rows == (lab, "clean") and e.cols == (lab, "adversarial"))
        np.testing.assert_allclose(ci["ci_low"], 1 - np.diag(entry.ci_high), atol=1e-12)  # 1 - x flips ends
        np.testing.assert_allclose(ci["ci_high"], 1 - np.diag(entry.ci_low), atol=1e-12)
        assert np.all(np.array(ci["ci_low"]) <= d + 1e-12) and np.all(d <= np.array(ci["ci_high"]) + 1e-12)
        np.testing.assert_allclose(d, 1 - np.diag(cka))
        late = res.late_disparity[lab]
        assert late["value"] == pytest.approx(d[-1:].mean()) and late["layers"] == ["avgpool"]
        assert late["ci_low"] <= late["value"] <= late["ci_high"]
        for inp in ("clean", "adversarial"):
            k = round(res.accuracy[lab][inp] * 40)
            assert res.accuracy_ci[lab][inp] == pytest.approx(list(wilson_interval(k, 40)))
    (pair,) = res.paired_disparity
    assert (pair["a"], pair["b"]) == ("tiny0", "tiny1") and len(pair["p_holm"]) == 3
    np.testing.assert_allclose(pair["difference"], np.array(res.disparity["tiny0"]) - res.disparity["tiny1"])
    with open(tmp_path / "out" / "disparity.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [float(r["ci_low"]) for r in rows[:3]] == pytest.approx(res.disparity_ci["tiny0"]["ci_low"], abs=1e-8)
    assert {r["n"] for r in rows} == {"40"}
    text = res.summary()
    assert "n = 40" in text and "class-stratified, sample seed 0" in text and "200 Poisson bootstrap" in text
    assert text.count("[") >= 2 * 6  # every accuracy and disparity cell has an interval
    off = compare_layers(CompareSettings(**{**settings.__dict__, "bootstrap": 0}), tmp_path / "off", progress=False)
    assert off.disparity_ci == {} and all(e.ci_low is None for e in off.cka) and off.paired_disparity == []
    np.testing.assert_array_equal(off.cka[0].matrix, res.cka[0].matrix)  # the bootstrap changes no value


def test_robust_accuracy_counts_images_right_both_clean_and_perturbed(trained_checkpoint, one_thread):
    """Robust accuracy (the audit's count) is not accuracy on the perturbed inputs: strong random noise turns
    some of the trained model's wrong answers right, and those must not count."""
    import torch

    from clrobust.attacks import AttackSpec, noise_batch
    from clrobust.checkpoints import load as load_model
    from clrobust.compare import CompareSettings, run_compare
    from clrobust.data import load_dataset, to_float

    spec = AttackSpec("noise", 32 / 255, steps=1, seed=3)
    res = run_compare(CompareSettings(models=[str(trained_checkpoint)], attack=spec, n_samples=64, batch_size=64,
                                      layers="stem,avgpool", bootstrap=0), progress=False)
    data = load_dataset("cifar10-mini", "test").sample(64)
    x, y = to_float(data.images), data.labels
    net = load_model(str(trained_checkpoint)).network.eval()
    with torch.no_grad():
        clean = net(x).argmax(1) == y
        moved = net(noise_batch(32 / 255, "Linf", x, 3, 0)).argmax(1) == y
    acc = res.accuracy["trained"]
    assert acc["clean"] == clean.sum().item() / 64 and acc["adversarial"] == moved.sum().item() / 64
    assert acc["robust"] == (clean & moved).sum().item() / 64
    assert acc["robust"] < acc["adversarial"]  # some wrong answers turned right: the counts differ
    lo, hi = res.accuracy_ci["trained"]["robust"]
    assert lo < acc["robust"] < hi
    assert "robust acc" in res.markdown()


def test_shared_adversarial_inputs_from_one_model(tiny_checkpoints):
    """--adv-source: the inputs crafted against one model are what every model is recorded on."""
    import torch

    from clrobust.attacks import AttackSpec, attack_batch
    from clrobust.checkpoints import load as load_model
    from clrobust.compare import CompareSettings, run_compare
    from clrobust.data import load_dataset, to_float
    from clrobust.errors import ClrobustError

    models = [str(p) for p in tiny_checkpoints]
    spec = AttackSpec("pgd", 8 / 255, steps=2, seed=2)
    base = dict(models=models, attack=spec, n_samples=16, batch_size=16, layers="stem,avgpool", bootstrap=0)
    res = run_compare(CompareSettings(**base, adv_source=models[0]), progress=False)
    assert res.adversarial_design == "crafted against tiny0, the same for every model"
    assert "adversarial inputs: crafted against tiny0" in res.describe()
    data = load_dataset("cifar10-mini", "test").sample(16)
    x, y = to_float(data.images), data.labels
    source = load_model(models[0]).network
    shared = attack_batch(spec, source, x, y, batch_index=0)
    other = load_model(models[1]).network
    own_adv = attack_batch(spec, other, x, y, batch_index=0)  # the attack needs gradients: outside no_grad
    with torch.no_grad():
        want = float((other(shared).argmax(1) == y).float().mean())
        own = float((other(own_adv).argmax(1) == y).float().mean())
    assert res.accuracy["tiny1"]["adversarial"] == pytest.approx(want)  # transfer, not its own attack
    separate = run_compare(CompareSettings(**base), progress=False)
    assert separate.accuracy["tiny1"]["adversarial"] == pytest.approx(own)
    assert separate.adversarial_design.startswith("each model's own")
    assert res.accuracy["tiny0"] == separate.accuracy["tiny0"]  # the source sees its own attack either way
    assert res.disparity["tiny0"] == separate.disparity["tiny0"]
    assert not np.allclose(res.disparity["tiny1"], separate.disparity["tiny1"])  # tiny1 saw other inputs
    with pytest.raises(ClrobustError, match="--adv-source 'simclr-st' is not one of the compared models"):
        run_compare(CompareSettings(**base, adv_source="simclr-st"), progress=False)


def test_groups_of_training_runs_report_mean_and_spread(tmp_path):
    """NAME@a,b,c and globs name several runs of one recipe; the summary gives their mean, SD and t-interval."""
    from conftest import tiny_network
    from scipy.stats import t as student_t

    from clrobust.attacks import AttackSpec
    from clrobust.checkpoints import save_network
    from clrobust.checkpoints.zoo import expand_group, expand_models
    from clrobust.compare import CompareSettings, run_compare
    from clrobust.errors import ClrobustError

    for i, run in enumerate(("s0", "s1", "s2")):
        save_network(tmp_path / f"rec-{run}", tiny_network(20 + i))
    save_network(tmp_path / "other", tiny_network(30))
    for i, run in enumerate(("a", "b")):
        save_network(tmp_path / f"alt-{run}", tiny_network(40 + i))
    group = f"{tmp_path}/rec@s0,s1,s2"
    assert expand_group(group) == [f"{tmp_path}/rec-{r}" for r in ("s0", "s1", "s2")]
    assert expand_group(f"{tmp_path}/rec-s*.safetensors") == [str(tmp_path / f"rec-{r}.safetensors")
                                                              for r in ("s0", "s1", "s2")]
    assert expand_group("simclr-at@a,b") == ["simclr-at-a", "simclr-at-b"] and expand_group("x") == ["x"]
    assert expand_models([group, "x"])[1] == {group: expand_group(group)}
    with pytest.raises(ClrobustError, match="matches no file"):
        expand_group(f"{tmp_path}/none-*.safetensors")
    with pytest.raises(ClrobustError, match="write NAME@a,b,c"):
        expand_group("rec@")
    res = run_compare(CompareSettings(models=[group, str(tmp_path / "other.safetensors")],
                                      attack=AttackSpec("pgd", 8 / 255, 1), n_samples=16, batch_size=16,
                                      layers="stem,avgpool", bootstrap=0), progress=False)
    assert res.labels == ["rec-s0", "rec-s1", "rec-s2", "other"]
    assert res.groups == {group: ["rec-s0", "rec-s1", "rec-s2"]}
    g = res.group_summary[group]["late_disparity"]
    v = np.array([res.late_disparity[lab]["value"] for lab in res.groups[group]])
    half = student_t.ppf(0.975, 2) * v.std(ddof=1) / np.sqrt(3)
    assert (g["mean"], g["sd"], g["ci_low"], g["ci_high"], g["n"]) == pytest.approx(
        (v.mean(), v.std(ddof=1), v.mean() - half, v.mean() + half, 3))
    assert f"{group} (3 training runs: rec-s0, rec-s1, rec-s2)" in res.summary()
    assert res.group_differences == []  # one group: nothing to compare it with

    # two groups: the difference of their means with Welch's t-interval over runs (scipy as the reference)
    from scipy.stats import ttest_ind

    alt = f"{tmp_path}/alt@a,b"
    two = run_compare(CompareSettings(models=[group, alt], attack=AttackSpec("pgd", 8 / 255, 1), n_samples=16,
                                      batch_size=16, layers="stem,avgpool", bootstrap=0), progress=False)
    (d,) = two.group_differences
    assert (d["a"], d["b"]) == (group, alt)
    for key, get in (("late_disparity", lambda lab: two.late_disparity[lab]["value"]),
                     ("clean_accuracy", lambda lab: two.accuracy[lab]["clean"])):
        x = np.array([get(lab) for lab in two.groups[group]])
        y = np.array([get(lab) for lab in two.groups[alt]])
        e = d[key]
        assert e["difference"] == pytest.approx(x.mean() - y.mean()) and e["n"] == [3, 2]
        if x.std() > 0 and y.std() > 0:  # (scipy warns on a constant group)
            ci = ttest_ind(x, y, equal_var=False).confidence_interval(0.95)
            assert (e["ci_low"], e["ci_high"]) == pytest.approx((ci.low, ci.high))
    assert f"{group} - {alt} (3 vs 2 training runs): mean last 1/3 disparity" in two.summary()
    assert json.loads(json.dumps(two.to_dict()))["group_differences"][0]["a"] == group


def test_welch_interval_against_its_formula_and_scipy():
    """Welch's interval: scipy's ttest_ind (unequal variances) and the Welch-Satterthwaite df in float64;
    a group of one run has no interval; runs that agree exactly give a zero-width one."""
    from scipy.stats import t as student_t
    from scipy.stats import ttest_ind

    from clrobust.uncertainty import t_interval, welch_interval

    x, y = np.array([0.61, 0.64, 0.58]), np.array([0.12, 0.2])
    e = welch_interval(x, y)
    ci = ttest_ind(x, y, equal_var=False).confidence_interval(0.95)
    assert (e["ci_low"], e["ci_high"]) == pytest.approx((ci.low, ci.high), rel=1e-12)
    va, vb = x.var(ddof=1) / 3, y.var(ddof=1) / 2
    df = (va + vb) ** 2 / (va ** 2 / 2 + vb ** 2 / 1)
    assert e["df"] == pytest.approx(df) and 1 <= e["df"] <= 3
    assert e["ci_high"] - e["difference"] == pytest.approx(student_t.ppf(0.975, df) * np.sqrt(va + vb))
    assert welch_interval(x, y[:1]) == {"difference": pytest.approx(x.mean() - 0.12), "n": [3, 1]}
    flat = welch_interval([0.5, 0.5], [0.25, 0.25])
    assert (flat["ci_low"], flat["difference"], flat["ci_high"]) == (0.25, 0.25, 0.25)
    m = t_interval(x)
    assert (m["ci_high"] - m["mean"]) == pytest.approx(student_t.ppf(0.975, 2) * x.std(ddof=1) / np.sqrt(3))


def test_other_measures_on_the_same_features_and_flips(tiny_checkpoints):
    """--measures: each layer's clean-vs-adversarial dissimilarity under another measure, on the pooled features
    recomputed here with hooks of our own; a reversed conclusion is reported as a flip."""
    from types import SimpleNamespace

    import torch.nn.functional as F
    from conftest import hooked_forward

    from clrobust import similarity
    from clrobust.attacks import AttackSpec, attack_batch
    from clrobust.checkpoints import load as load_model
    from clrobust.compare import CompareSettings, measure_flips, run_compare
    from clrobust.data import load_dataset, to_float
    from clrobust.errors import ClrobustError

    spec = AttackSpec("pgd", 8 / 255, 1, seed=1)
    settings = CompareSettings(models=[str(tiny_checkpoints[0])], attack=spec, n_samples=24, batch_size=24,
                               layers="stem,layer3.1,avgpool", bootstrap=0, measures=["rsa", "procrustes"])
    res = run_compare(settings, progress=False)
    net = load_model(str(tiny_checkpoints[0])).network
    data = load_dataset("cifar10-mini", "test").sample(24)
    x, y = to_float(data.images), data.labels
    names = ["stem", "layer3.1", "avgpool"]
    clean, _ = hooked_forward(net, x, names)
    adv, _ = hooked_forward(net, attack_batch(spec, net, x, y, batch_index=0), names)

    def pooled(a):
        return (F.adaptive_avg_pool2d(a, 2) if a.dim() == 4 else a).flatten(1).double()

    for n, layer in enumerate(names):
        want_rsa = 1 - similarity.compute("rsa", pooled(clean[layer]), pooled(adv[layer]))
        want_pro = similarity.compute("procrustes", pooled(clean[layer]), pooled(adv[layer]))
        assert res.measures["rsa"]["tiny0"][n] == pytest.approx(want_rsa, abs=1e-6)
        assert res.measures["procrustes"]["tiny0"][n] == pytest.approx(want_pro, abs=1e-6)
    assert "other measures (full batch" in res.summary() and "measures" in res.timings_seconds
    fake = SimpleNamespace(labels=["a", "b"], metric="linear-cka", disparity={"a": [0.0, 0.1, 0.5], "b": [0, 0, 0.1]},
                           measures={"m": {"a": [0.2, 0.1, 0.0], "b": [0.0, 0.0, 0.3]}})
    flips = measure_flips(fake)
    assert flips == ["a: disparity rises with depth under linear-cka (+0.500) but falls under m (-0.200)",
                     "late disparity a > b under linear-cka (+0.400) but < under m (-0.300)"]
    with pytest.raises(ClrobustError, match="unknown measure 'cca'"):
        run_compare(CompareSettings(**{**settings.__dict__, "measures": ["cca"]}), progress=False)


def test_precision_fast_matches_exact_in_the_job(tiny_checkpoints):
    from clrobust.attacks import AttackSpec
    from clrobust.compare import CompareSettings, run_compare

    base = dict(models=[str(tiny_checkpoints[0])], attack=AttackSpec("pgd", 8 / 255, 1), n_samples=24,
                batch_size=12, bootstrap=0)
    exact = run_compare(CompareSettings(**base), progress=False)
    fast = run_compare(CompareSettings(**base, precision="fast"), progress=False)
    assert "float32 Gram" in fast.cka_estimator and "float32" not in exact.cka_estimator
    for a, b in zip(exact.cka, fast.cka):
        assert np.abs(a.matrix - b.matrix).max() < 1e-6


@pytest.mark.slow
def test_grouped_attack_calls_give_the_same_comparison(tiny_checkpoints, monkeypatch, one_thread):
    """--attack-batch-size 24 over batches of 8: the attack is called once per three batches (spied on), and
    accuracies and every CKA matrix equal the batch-by-batch run's."""
    import clrobust.activations as activations
    from clrobust.attacks import AttackSpec
    from clrobust.compare import CompareSettings, run_compare

    models = [str(p) for p in tiny_checkpoints]
    base = dict(models=models, n_samples=40, batch_size=8, seed=1, layers="stem,layer2.*,avgpool")
    plain = run_compare(CompareSettings(**base, attack=AttackSpec("pgd", 8 / 255, 3, seed=1)), progress=False)
    calls = []
    real = activations.attack_batches

    def spy(spec, model, xs, ys, indices):
        calls.append(list(indices))
        return real(spec, model, xs, ys, indices)

    monkeypatch.setattr(activations, "attack_batches", spy)
    grouped = run_compare(CompareSettings(**base, attack=AttackSpec("pgd", 8 / 255, 3, seed=1, batch_size=24)),
                          progress=False)
    assert calls == [[0, 1, 2], [0, 1, 2], [3, 4], [3, 4]]  # per group, once per model
    assert grouped.accuracy == plain.accuracy
    for a, b in zip(grouped.cka, plain.cka):
        assert (a.rows, a.cols) == (b.rows, b.cols)
        np.testing.assert_allclose(a.matrix, b.matrix, rtol=0, atol=1e-6)


@pytest.mark.parametrize("grouped", [False, True])
def test_a_model_added_to_a_cached_comparison_is_the_only_one_attacked(tmp_path, tiny_checkpoints, monkeypatch,
                                                                      one_thread, grouped):
    """--cache holds one model's recordings; comparing it with a second attacks and records the second alone
    (batch by batch, and in grouped attack calls), and gives the numbers of a run without the cache."""
    import clrobust.activations as activations
    from clrobust.attacks import AttackSpec
    from clrobust.compare import CompareSettings, run_compare
    from clrobust.hooks import LayerRecorder

    a, b = (str(p) for p in tiny_checkpoints)
    attack = AttackSpec("pgd", 8 / 255, 2, seed=2, batch_size=1024 if grouped else None)
    base = dict(n_samples=24, batch_size=8, seed=2, layers="stem,layer3.*,avgpool", attack=attack)
    run_compare(CompareSettings(models=[a], cache=str(tmp_path / "rec"), **base), progress=False)
    crafted_on, forwards = [], []
    real_one, real_many, real_record = activations.attack_batch, activations.attack_batches, LayerRecorder.record
    monkeypatch.setattr(activations, "attack_batch", lambda s, net, *r, **k: crafted_on.append(net) or
                        real_one(s, net, *r, **k))
    monkeypatch.setattr(activations, "attack_batches", lambda s, net, *r, **k: crafted_on.append(net) or
                        real_many(s, net, *r, **k))
    monkeypatch.setattr(LayerRecorder, "record", lambda self, x: forwards.append(1) or real_record(self, x))
    both = run_compare(CompareSettings(models=[a, b], cache=str(tmp_path / "rec"), **base), progress=False)
    nets = {id(n) for n in crafted_on}  # the networks attacked, by identity
    # the second model's adversarial examples (3 batches, or one grouped call) and noise (3 batches), and
    # its 3 x 3 recordings; the first model's all come from the cache
    assert len(nets) == 1 and len(forwards) == 3 * 3
    assert len(crafted_on) == (1 if grouped else 3) + 3
    fresh = run_compare(CompareSettings(models=[a, b], **base), progress=False)
    assert both.accuracy == fresh.accuracy
    for x, y in zip(both.cka, fresh.cka):
        np.testing.assert_array_equal(x.matrix, y.matrix)


def test_cached_recordings_are_reanalysed_without_attacks_or_forward_passes(tmp_path, tiny_checkpoints, monkeypatch,
                                                                             one_thread):
    """--cache: a second run with another measure reads every recording (no attack, no forward pass) and
    gives the first run's numbers; another eps re-records the attacked inputs only."""
    import clrobust.activations as activations
    from clrobust.attacks import AttackSpec
    from clrobust.compare import CompareSettings, run_compare
    from clrobust.hooks import LayerRecorder

    models = [str(p) for p in tiny_checkpoints]
    base = dict(models=models, n_samples=24, batch_size=8, seed=2, layers="stem,layer3.*,avgpool",
                cache=str(tmp_path / "rec"))
    first = run_compare(CompareSettings(**base, attack=AttackSpec("pgd", 8 / 255, 2, seed=2)), progress=False)
    files = sorted((tmp_path / "rec").rglob("*.safetensors"))
    assert len(files) == 2 * 3 * 3  # models x inputs (clean, adversarial, noise) x batches
    attacks, forwards = [], []
    real_attack, real_record = activations.attack_batch, LayerRecorder.record
    monkeypatch.setattr(activations, "attack_batch", lambda *a, **k: attacks.append(1) or real_attack(*a, **k))
    monkeypatch.setattr(LayerRecorder, "record", lambda self, x: forwards.append(1) or real_record(self, x))
    again = run_compare(CompareSettings(**base, attack=AttackSpec("pgd", 8 / 255, 2, seed=2), measures=["rbf-cka"]),
                        progress=False)
    assert attacks == [] and forwards == []
    assert again.accuracy == first.accuracy
    for a, b in zip(again.cka, first.cka):
        np.testing.assert_array_equal(a.matrix, b.matrix)
    assert again.measures  # the other measure was computed from the cached recordings
    other = run_compare(CompareSettings(**base, attack=AttackSpec("pgd", 4 / 255, 2, seed=2)), progress=False)
    assert len(attacks) == 2 * 3 * 2 and len(forwards) == 2 * 3 * 2  # adversarial and noise inputs, not clean
    assert other.accuracy[other.labels[0]]["clean"] == first.accuracy[first.labels[0]]["clean"]
    files[0].write_bytes(b"broken")  # an unreadable file is recomputed, with a warning
    with pytest.warns(UserWarning, match="recording cache"):
        run_compare(CompareSettings(**base, attack=AttackSpec("pgd", 8 / 255, 2, seed=2)), progress=False)


def test_stage_timings_wait_for_the_device(monkeypatch):
    """A CUDA stage's clock stops only once the device has done its queued work (CUDA runs asynchronously:
    without the wait a stage's GPU time lands in whichever stage next reads a result); a CPU stage never waits."""
    import time

    import torch

    import clrobust.activations as activations

    waited = []
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: waited.append(device))
    start = time.perf_counter()
    assert activations.elapsed_since(start, torch.device("cpu")) >= 0 and waited == []
    gpu = torch.device("cuda", 0)
    assert activations.elapsed_since(start, gpu) >= 0 and waited == [gpu]
