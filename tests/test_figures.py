"""The four figure families on tiny models: files (real images), JSON = plotted numbers = run_compare's and
probe_layers', findings re-derived from the JSON, --check, CLI."""

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import assert_real_png

from clrobust.attacks import AttackSpec
from clrobust.checkpoints import save_network

pytestmark = pytest.mark.usefixtures("one_thread")


def _assert_real_png(path: Path) -> None:
    assert_real_png(path, min_side=300, max_side=4000)


def _assert_real_pdf(path: Path) -> None:
    raw = path.read_bytes()
    assert raw.startswith(b"%PDF-") and b"%%EOF" in raw[-64:] and len(raw) > 2000, path.name


def _late(results, label, other="adversarial"):
    """Mean of 1 - CKA(clean_l, other_l) over the last third of the layers, and its replicates."""
    d = 1 - np.diag(results.matrix((label, "clean"), (label, other)))
    reps = 1 - np.diagonal(results.matrix_replicates((label, "clean"), (label, other)), axis1=1, axis2=2)
    k = max(1, len(d) // 3)
    return d[-k:].mean(), reps[:, -k:].mean(1)


def _verdict(reps):
    lo, hi = np.nanpercentile(reps, [2.5, 97.5])  # replicates with a non-positive self-HSIC are NaN
    return ("supported" if lo > 0 else "contradicted" if hi < 0 else "inconclusive"), lo, hi


@pytest.fixture(scope="module")
def four_models(tmp_path_factory):
    from conftest import tiny_network

    d = tmp_path_factory.mktemp("fig")
    return [str(save_network(d / f"m{i}", tiny_network(10 + i), {"training": {"scheme": "test"}}))
            for i in range(4)]


@pytest.mark.slow  # the four families end to end: the heaviest in-process test
def test_all_figures_numbers_match_plots(tmp_path, four_models, monkeypatch):
    from clrobust import figures, plots

    a, b, c, d = four_models
    subs = {"simclr-st": a, "supcon-st": b, "supervised-st": c, "simclr-at": b, "simclr-fat": c,
            "simclr-at-eps2": d, "simclr-at-eps16": c, "supervised-at": d}
    captured_results, drawn, probes_drawn = [], [], []
    from clrobust.figures import job

    real_run, real_heatmap, real_probe = job.run_compare, plots.heatmap, plots.probe_axes

    def spy_run(settings, **kw):
        r = real_run(settings, **kw)
        captured_results.append(r)
        return r

    def spy_heatmap(ax, matrix, rows, cols, title, *args, **kw):
        drawn.append((title, np.array(matrix)))
        return real_heatmap(ax, matrix, rows, cols, title, *args, **kw)

    def spy_probe(ax, layers, curves, title, **kw):
        probes_drawn.append((title, {k: list(v) for k, v in curves.items()}))
        return real_probe(ax, layers, curves, title, **kw)

    from clrobust import probes

    probe_calls = []
    real_probe_layers = probes.probe_layers

    def spy_probe_layers(net, train, test, *args, **kw):
        r = real_probe_layers(net, train, test, *args, **kw)
        probe_calls.append(((len(train), train.split, len(test), test.split) + args, kw, r))
        return r

    monkeypatch.setattr(probes, "probe_layers", spy_probe_layers)
    monkeypatch.setattr(job, "run_compare", spy_run)
    monkeypatch.setattr(plots, "heatmap", spy_heatmap)
    monkeypatch.setattr(plots, "probe_axes", spy_probe)
    settings = figures.FigureSettings(attack=AttackSpec("pgd", 8 / 255, 1), n_samples=16, n_train=32,
                                      batch_size=8, models=subs)
    out = tmp_path / "figs"
    res = figures.make_figures(list(figures.FAMILIES), settings, out, progress=False, check=True)

    assert len(captured_results) == 1  # one pass over the union of models
    results = captured_results[0]
    for fam in figures.FAMILIES:
        _assert_real_png(out / f"{fam}.png")
        _assert_real_pdf(out / f"{fam}.pdf")
    assert (out / "findings.json").exists()

    for fam in figures.FAMILIES:  # each JSON reads back into its family's typed result
        back = figures.FigureResult.read(out / f"{fam}.json")
        assert type(back) is figures.FAMILY_CLASSES[fam] and back == res.figures[fam]
    drawn_by_title = {t: m for t, m in drawn}
    n_panels = 0
    for fam in figures.FAMILIES:
        data = json.loads((out / f"{fam}.json").read_text())
        assert data["attack"]["eps_text"] == "8/255" and data["n_samples"] == 16
        for p in data["panels"]:
            m = np.asarray(p["matrix"])
            # what the heatmap function received ...
            np.testing.assert_array_equal(drawn_by_title[p["title"]], m)
            # ... and what run_compare returned
            rows, cols = (p["rows"]["model"], p["rows"]["input"]), (p["cols"]["model"], p["cols"]["input"])
            np.testing.assert_array_equal(results.matrix(rows, cols), m)
            assert m.shape == (len(p["row_layers"]), len(p["col_layers"]))
            n_panels += 1
        s = data["summary"]
        for key, info in data["models"].items():
            lab = info["label"]
            assert s["late_disparity"][key] == pytest.approx(figures.late_mean(results.disparity[lab]))
            cc = results.matrix((lab, "clean"), (lab, "clean"))
            assert s["cross_layer_cka_clean"][key] == pytest.approx(figures.off_diagonal_mean(cc))
            assert info["accuracy"] == results.accuracy[lab]
            assert s["robust_accuracy"][key] == results.accuracy[lab]["robust"]
            assert s["clean_accuracy"][key] == results.accuracy[lab]["clean"]
            d = results.disparity[lab]
            assert s["early_disparity"][key] == pytest.approx(float(np.mean(d[:max(1, len(d) // 3)])))
    assert n_panels == 6 + 4 + 2 and len(drawn) == n_panels

    eps = json.loads((out / "eps-sweep.json").read_text())
    assert eps["curves"]["disparity"]["AT eps 2/255"] == results.disparity["m3"]
    assert "robust acc" in eps["curves"]["legend"]["AT eps 16/255"]
    for key, info in eps["models"].items():
        assert f"(robust acc {results.accuracy[info['label']]['robust']:.1%})" in eps["curves"]["legend"][key]
    cm = json.loads((out / "cross-model.json").read_text())["summary"]["cross_model_cka"]
    assert cm["ST"]["mean"] == pytest.approx(float(np.mean(results.matrix(
        ("m0", "adversarial"), ("m2", "adversarial")))))
    at = json.loads((out / "at-probes.json").read_text())
    assert set(at["probes"]) == {"CL AT", "CL Full-AT"} and len(probes_drawn) == 2
    assert "2x2" in at["probes"]["CL AT"]["pooling"]
    assert len(probe_calls) == 2
    for (title, curves), key, (args, _kw, r) in zip(probes_drawn, ("CL AT", "CL Full-AT"), probe_calls):
        pr = at["probes"][key]
        assert title.startswith(f"{key}: linear probe per layer")
        for curve in ("train", "clean", "adversarial"):
            assert curves[curve] == pr[f"{curve}_accuracy"], (key, curve)  # drawn = written
        # written = what probe_layers returned, called on n_train train / n_samples test images with the settings
        assert args[:4] == (32, "train", 16, "test") and args[4] == "blocks" and args[6:8] == (8, 0), args
        assert (args[5].name, args[5].eps, args[5].steps) == ("pgd", 8 / 255, 1)
        assert json.loads(json.dumps(r.to_dict())) == pr
        assert pr["layers"] == results.layers[at["models"][key]["label"]]
        # the probes' attack is compare's attack: same adversarial images, same model accuracy
        assert pr["model_accuracy"] == at["models"][key]["accuracy"]
        assert at["summary"]["probe_last_layer"][key] == {"clean": pr["clean_accuracy"][-1],
                                                          "adversarial": pr["adversarial_accuracy"][-1]}
    lines = [f.line() for f in res.findings]
    assert [f.number for f in res.findings] == [1, 2, 3, 4]
    assert all(f.verdict in ("supported", "contradicted", "inconclusive") for f in res.findings), lines
    assert all(ln.startswith(f"finding {i}:") for i, ln in zip(range(1, 5), lines))
    written = json.loads((out / "findings.json").read_text())
    assert written["schema"] == "clrobust.findings/2" and "Poisson bootstrap" in written["uncertainty"]
    assert [(f["number"], f["verdict"], f["value"]) for f in written["findings"]] == \
        [(f.number, f.verdict, f.value) for f in res.findings]
    # Finding 1 re-derived here: per ST model, late disparity minus the noise control's (same images, paired),
    # and late minus early disparity; the headline is the model with the smallest lower bound.
    f1 = res.findings[0]
    st = {"CL ST": "m0", "SCL ST": "m1", "SL ST": "m2"}
    excess = {}
    for key, lab in st.items():
        (v, r), (vn, rn) = _late(results, lab), _late(results, lab, "noise")
        excess[key] = (v - vn, *_verdict(r - rn)[1:])
    weakest = min(excess, key=lambda k: excess[k][1])
    assert (f1.value, f1.ci_low, f1.ci_high) == pytest.approx(excess[weakest], abs=1e-9)
    assert "random noise of the same eps" in f1.baseline and f"{f1.verdict.upper()}." in lines[0]
    # Finding 4: AT pair minus ST pair, mean cross-model CKA on adversarial inputs, paired replicates.
    f4 = res.findings[3]
    def cross(a, b):
        return (results.matrix((a, "adversarial"), (b, "adversarial")).mean(),
                results.matrix_replicates((a, "adversarial"), (b, "adversarial")).mean((1, 2)))
    (at, rat), (stv, rst) = cross("m1", "m3"), cross("m0", "m2")
    verdict, lo, hi = _verdict(rat - rst)
    assert (f4.verdict, f4.value, f4.ci_low, f4.ci_high) == (verdict, pytest.approx(at - stv), pytest.approx(lo),
                                                           pytest.approx(hi))
    assert "crafted against that model" in f4.detail
    # The same folder is refused without overwrite.
    from clrobust.errors import ClrobustError
    with pytest.raises(ClrobustError, match="--overwrite"):
        figures.make_figures(["eps-sweep"], settings, out, progress=False)


def test_figures_cli_cross_model_check(tmp_path, four_models):
    from click.testing import CliRunner

    from clrobust.cli import cli

    out = tmp_path / "cm"
    res = CliRunner().invoke(cli, ["figures", "cross-model", "--models", ",".join(four_models), "--n-samples", "16",
                                   "--batch-size", "8", "--steps", "1", "--layers", "stem,layer3.?,avgpool",
                                   "--check", "--out", str(out), "--no-progress"])
    assert res.exit_code == 0, res.output
    for i in (1, 2, 3, 4):
        assert f"finding {i}:" in res.output
    assert "finding 4: after adversarial training" in res.output and "NOT CHECKED" in res.output
    data = json.loads((out / "cross-model.json").read_text())
    assert [p["row_layers"] for p in data["panels"]] == [["stem", "layer3.0", "layer3.1", "avgpool"]] * 2
    assert "PGD-1 eps 8/255" in data["title"]
    _assert_real_png(out / "cross-model.png")
    _assert_real_pdf(out / "cross-model.pdf")
    findings = {int(m.group(1)): m.group(0) for m in re.finditer(r"finding (\d): [^\n]*", res.output)}
    assert "NOT CHECKED" in findings[2] and "NOT CHECKED" in findings[3]  # need at-probes, eps-sweep
    cm = data["summary"]["cross_model_cka"]
    for p, tr, (row, col) in zip(data["panels"], ("ST", "AT"), ((0, 1), (2, 3))):
        assert p["training"] == tr and cm[tr]["mean"] == pytest.approx(float(np.mean(p["matrix"])))
        assert (p["rows"]["model"], p["cols"]["model"]) == (Path(four_models[row]).stem, Path(four_models[col]).stem)
    gap = cm["AT"]["mean"] - cm["ST"]["mean"]
    assert re.search(rf"(SUPPORTED|CONTRADICTED|INCONCLUSIVE)\. AT - ST mean cross-model CKA {gap:.3f} \[", findings[4])
    verdict = re.search(r"(SUPPORTED|CONTRADICTED|INCONCLUSIVE)\.", findings[4]).group(1)
    lo, hi = (float(v) for v in re.search(r"\[(-?[0-9.]+), (-?[0-9.]+)\]", findings[4]).groups())
    assert verdict == ("SUPPORTED" if lo > 0 else "CONTRADICTED" if hi < 0 else "INCONCLUSIVE")


@pytest.mark.slow
def test_figures_bad_models_exit_2():
    p = subprocess.run([sys.executable, "-m", "clrobust", "figures", "all", "--models", "a.safetensors"],
                       capture_output=True, text=True)
    assert p.returncode == 2 and "Traceback" not in p.stderr
    assert len(p.stderr.strip().splitlines()) == 1 and "NAME=PATH" in p.stderr


def test_panel_titles_wrap_to_their_panel():
    """A title longer than its panel (long model names) wraps at word breaks; one that fits stays one line."""
    from clrobust import plots

    fig, axes = plots.new_figure(1, 2, figsize=(11, 5.2), squeeze=False)
    m = np.eye(3)
    long = "AT: CL AT (simclr-at-s0-with-a-long-name) vs SL AT (supervised-at-s0), adversarial inputs"
    plots.heatmap(axes[0, 0], m, ["a", "b", "c"], ["a", "b", "c"], long)
    plots.heatmap(axes[0, 1], m, ["a", "b", "c"], ["a", "b", "c"], "CL AT (simclr-at): clean vs clean")
    wrapped = axes[0, 0].get_title()
    assert "\n" in wrapped and wrapped.replace("\n", " ") == long
    assert axes[0, 1].get_title() == "CL AT (simclr-at): clean vs clean"
