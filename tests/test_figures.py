"""The four figure families on tiny models: files, JSON = plotted numbers = run_compare's, --check, CLI."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from clrobust.attacks import AttackSpec
from clrobust.checkpoints import save_network


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def four_models(tmp_path_factory):
    from conftest import tiny_network

    d = tmp_path_factory.mktemp("fig")
    return [str(save_network(d / f"m{i}", tiny_network(10 + i), {"training": {"scheme": "test"}}))
            for i in range(4)]


def test_all_figures_numbers_match_plots(tmp_path, four_models, monkeypatch):
    from clrobust import figures, plots

    a, b, c, d = four_models
    subs = {"simclr-st": a, "supcon-st": b, "supervised-st": c, "simclr-at": b, "simclr-fat": c,
            "simclr-at-eps2": d, "simclr-at-eps16": c, "supervised-at": d}
    captured_results, drawn, probes_drawn = [], [], []
    real_run, real_heatmap, real_probe = figures.run_compare, plots.heatmap, plots.probe_axes

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

    monkeypatch.setattr(figures, "run_compare", spy_run)
    monkeypatch.setattr(plots, "heatmap", spy_heatmap)
    monkeypatch.setattr(plots, "probe_axes", spy_probe)
    settings = figures.FigureSettings(attack=AttackSpec("pgd", 8 / 255, 1), n_samples=16, n_train=32,
                                      batch_size=8, models=subs)
    out = tmp_path / "figs"
    res = figures.make_figures(list(figures.FAMILIES), settings, out, progress=False, check=True)

    assert len(captured_results) == 1  # one pass over the union of models
    results = captured_results[0]
    for fam in figures.FAMILIES:
        for ext in ("png", "pdf", "json"):
            assert (out / f"{fam}.{ext}").stat().st_size > 0, (fam, ext)
    assert (out / "findings.json").exists()

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
            np.testing.assert_array_equal(figures.find_matrix(results, rows, cols), m)
            assert m.shape == (len(p["row_layers"]), len(p["col_layers"]))
            n_panels += 1
        s = data["summary"]
        for key, info in data["models"].items():
            lab = info["label"]
            assert s["late_disparity"][key] == pytest.approx(figures.late_mean(results["disparity"][lab]))
            cc = figures.find_matrix(results, (lab, "clean"), (lab, "clean"))
            assert s["cross_layer_cka_clean"][key] == pytest.approx(figures.off_diagonal_mean(cc))
    assert n_panels == 6 + 4 + 2 and len(drawn) == n_panels

    eps = json.loads((out / "eps-sweep.json").read_text())
    assert eps["curves"]["disparity"]["AT eps 2/255"] == results["disparity"]["m3"]
    assert "robust acc" in eps["curves"]["legend"]["AT eps 16/255"]
    cm = json.loads((out / "cross-model.json").read_text())["summary"]["cross_model_cka"]
    assert cm["ST"]["mean"] == pytest.approx(float(np.mean(figures.find_matrix(
        results, ("m0", "adversarial"), ("m2", "adversarial")))))
    at = json.loads((out / "at-probes.json").read_text())
    assert set(at["probes"]) == {"CL AT", "CL Full-AT"} and len(probes_drawn) == 2
    assert probes_drawn[0][1]["clean"] == at["probes"]["CL AT"]["clean_accuracy"]
    assert "2x2" in at["probes"]["CL AT"]["pooling"]
    lines = [f.line() for f in res["findings"]]
    assert [f.number for f in res["findings"]] == [1, 2, 3, 4]
    assert all(f.status in ("agrees", "disagrees") and f.margin is not None for f in res["findings"])
    assert all(ln.startswith(f"finding {i}:") for i, ln in zip(range(1, 5), lines))
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
    assert "PGD-1 eps 8/255" in data["title"] and (out / "cross-model.pdf").exists()


def test_figures_bad_models_exit_2():
    p = subprocess.run([sys.executable, "-m", "clrobust", "figures", "all", "--models", "a.safetensors"],
                       capture_output=True, text=True)
    assert p.returncode == 2 and "Traceback" not in p.stderr
    assert len(p.stderr.strip().splitlines()) == 1 and "NAME=PATH" in p.stderr
