"""clrobust audit (report, worst case, resume, probe for head-less encoders) and
2-process gloo runs of audit and compare-layers equal to one process."""

from __future__ import annotations

import csv
import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from clrobust.errors import ClrobustError
from tests.conftest import assert_real_png, supcontrast_file, torchrun


def run(args, env=None):
    p = subprocess.run([sys.executable, "-m", "clrobust", *args], capture_output=True, text=True, env=env)
    return p.returncode, p.stdout + p.stderr


AUDIT = ["--n-samples", "16", "--batch-size", "8", "--eps", "1/255,8/255", "--no-progress"]


@pytest.mark.slow
def test_audit_report_worst_case_and_resume(tmp_path, tiny_checkpoints, trained_checkpoint):
    a, b = str(tiny_checkpoints[0]), str(trained_checkpoint)
    out = tmp_path / "audit"
    code, text = run(["audit", a, b, *AUDIT, "--attacks", "fgsm,pgd20,apgd-ce,tm1-pgd20", "--out", str(out)])
    assert code == 0, text
    assert "| tiny0 |" in text and "report in" in text
    for name in ("report.json", "report.csv", "report.md", "robust_accuracy_vs_eps.png", "audit-cache.json"):
        assert (out / name).exists(), name
    rep = json.loads((out / "report.json").read_text())
    assert rep["n_samples"] == 16 and rep["seed"] == 0 and "torch" in rep["versions"]
    rows = rep["rows"]
    assert {r["model"] for r in rows} == {"tiny0", "trained"}
    for r in rows:
        assert 0 <= r["robust_accuracy"] <= r["clean_accuracy"] <= 1
    cache = json.loads((out / "audit-cache.json").read_text())["results"]
    for m in ("tiny0", "trained"):
        clean = np.array(cache[m]["clean"])
        for eps in ("1/255", "8/255"):
            by = {r["attack"]: r for r in rows if r["model"] == m and r["eps_text"] == eps}
            assert set(by) == {"fgsm", "pgd20", "apgd-ce", "tm1-pgd20", "worst-case (II)"}
            # Worst case is the per-point AND of the threat-model-II attacks (independent recount).
            e = float(eval(eps))
            per = [np.array(cache[m][f"{att}|Linf|{e:.10g}"]) & clean for att in ("fgsm", "pgd20", "apgd-ce")]
            expect = np.logical_and.reduce(per).mean()
            assert abs(by["worst-case (II)"]["robust_accuracy"] - expect) < 1e-12
            assert by["worst-case (II)"]["robust_accuracy"] <= min(by[k]["robust_accuracy"]
                                                                   for k in ("fgsm", "pgd20", "apgd-ce"))
    # The trained model keeps some points at 1/255: the worst case is a non-trivial number.
    worst = next(r for r in rows if r["model"] == "trained" and r["attack"] == "worst-case (II)"
                 and r["eps_text"] == "1/255")
    assert 0 < worst["robust_accuracy"] < worst["clean_accuracy"]

    # A complete result is never touched without --overwrite ...
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["complete"] and set(manifest["files"]) == {"report.json", "report.csv", "report.md",
                                                               "robust_accuracy_vs_eps.png", "settings.json",
                                                               "manifest.json"}
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    args = ["audit", a, b, *AUDIT, "--attacks", "fgsm,pgd20,apgd-ce,tm1-pgd20", "--out", str(out)]
    code, text = run(args)
    assert code == 2 and "--overwrite" in text and len(text.strip().splitlines()) == 1, text
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before
    # ... and with it, re-running resumes from the cache (no attack recomputed) and gives the same report.
    cache_before = (out / "audit-cache.json").read_text()
    code, text = run(args + ["--overwrite"])
    assert code == 0, text
    assert (out / "audit-cache.json").read_text() == cache_before
    assert json.loads((out / "report.json").read_text())["rows"] == rows

    # Different settings in the same folder: refused in one line.
    code, text = run(["audit", a, *AUDIT[:-3], "--eps", "2/255", "--attacks", "fgsm", "--out", str(out)])
    assert code == 2 and "--overwrite" in text and "Traceback" not in text and len(text.strip().splitlines()) == 1


@pytest.mark.slow
def test_resume_recomputes_a_model_whose_weights_changed(tmp_path, tiny_checkpoints):
    import shutil

    a, b = tiny_checkpoints
    model = tmp_path / "m.safetensors"
    shutil.copy(a, model)
    shutil.copy(a.with_suffix(".json"), model.with_suffix(".json"))
    out, args = tmp_path / "audit", ["--n-samples", "16", "--batch-size", "8", "--eps", "8/255",
                                     "--attacks", "fgsm", "--no-progress"]
    assert run(["audit", str(model), *args, "--out", str(out)])[0] == 0
    before = json.loads((out / "audit-cache.json").read_text())["results"]["m"]
    shutil.copy(b, model)  # same name, other weights: the cached results no longer apply
    code, text = run(["audit", str(model), *args, "--out", str(out), "--overwrite"])
    assert code == 0 and "weights differ" in text, text
    after = json.loads((out / "audit-cache.json").read_text())["results"]["m"]
    assert after["weights"] != before["weights"]
    ref = tmp_path / "ref"  # independent fresh audit of the new weights
    assert run(["audit", str(b), *args, "--out", str(ref)])[0] == 0
    fresh = json.loads((ref / "audit-cache.json").read_text())["results"]["tiny1"]
    assert after == fresh


@pytest.mark.slow
def test_audit_bad_eps_and_attack_are_one_line_errors(tmp_path, tiny_checkpoints):
    a = str(tiny_checkpoints[0])
    for args, needle in ((["--eps", "8"], "eps"), (["--attacks", "cw"], "unknown attack")):
        code, text = run(["audit", a, "--out", str(tmp_path / "x"), *args])
        assert code == 2 and needle in text and "Traceback" not in text, text


@pytest.mark.slow
def test_headless_checkpoint_gets_a_linear_probe(tmp_path):
    """A SupContrast-layout checkpoint has no classifier: audit fits a probe on train features."""
    path = supcontrast_file(tmp_path / "supcon_last.pth")
    out = tmp_path / "audit"
    code, text = run(["audit", str(path), "--n-samples", "16", "--batch-size", "8", "--eps", "8/255",
                      "--attacks", "fgsm", "--probe-train", "96", "--no-progress", "--out", str(out)])
    assert code == 0, text
    rep = json.loads((out / "report.json").read_text())
    info = rep["models"]["supcon_last"]
    assert "linear probe" in info["classifier"] and info["probe_train_accuracy"] > 0.3
    assert all(r["robust_accuracy"] <= r["clean_accuracy"] for r in rep["rows"])


@pytest.mark.slow
def test_two_processes_equal_one(tmp_path, tiny_checkpoints):
    """gloo: compare-layers (2 processes) and audit (2 and 3) give the single-process numbers."""
    a, b = map(str, tiny_checkpoints)
    cmp = ["compare-layers", a, b, "--n-samples", "40", "--batch-size", "8", "--steps", "2", "--no-progress"]
    code, text = run(cmp + ["--out", str(tmp_path / "c1")])
    assert code == 0, text
    code, text = torchrun(cmp + ["--out", str(tmp_path / "c2")])
    assert code == 0, text
    r1, r2 = (json.loads((tmp_path / d / "results.json").read_text()) for d in ("c1", "c2"))
    assert r1["accuracy"] == r2["accuracy"]
    for e1, e2 in zip(r1["cka"], r2["cka"]):
        assert e1["rows"] == e2["rows"] and e1["cols"] == e2["cols"]
        np.testing.assert_allclose(e1["matrix"], e2["matrix"], atol=1e-6, rtol=0)

    aud = ["audit", a, "--n-samples", "24", "--batch-size", "8", "--eps", "8/255", "--attacks", "fgsm,pgd20",
           "--no-progress"]
    code, text = run(aud + ["--out", str(tmp_path / "a1")])
    assert code == 0, text
    rows1 = json.loads((tmp_path / "a1" / "report.json").read_text())["rows"]
    for processes in (2, 3):  # 3 batches of 8: one each
        code, text = torchrun(aud + ["--out", str(tmp_path / f"a{processes}")], processes=processes)
        assert code == 0, text
        assert json.loads((tmp_path / f"a{processes}" / "report.json").read_text())["rows"] == rows1


@pytest.mark.slow
def test_a_process_without_a_batch_joins_every_collective(tmp_path, tiny_checkpoints):
    """3 processes, 2 batches: the third owns none, still all-reduces, and the numbers equal one process's."""
    a = str(tiny_checkpoints[0])
    cmp = ["compare-layers", a, "--n-samples", "16", "--batch-size", "8", "--steps", "1", "--layers", "stem,avgpool",
           "--no-progress"]
    code, text = run(cmp + ["--out", str(tmp_path / "one")])
    assert code == 0, text
    code, text = torchrun(cmp + ["--out", str(tmp_path / "three")], processes=3)
    assert code == 0, text
    r1, r3 = (json.loads((tmp_path / d / "results.json").read_text()) for d in ("one", "three"))
    assert r3["processes"] == 3 and r1["accuracy"] == r3["accuracy"]
    for e1, e3 in zip(r1["cka"], r3["cka"]):
        np.testing.assert_allclose(e1["matrix"], e3["matrix"], atol=1e-9, rtol=0)


# ----------------------------------------------------------------------------- independent recount, in process

def _recount(net, data, spec, batch_size: int) -> torch.Tensor:
    """Per-image correctness written here, independently of clrobust's stages: each batch attacked with
    ``attack_batch`` (``spec`` None: clean), then classified."""
    from clrobust.attacks import attack_batch
    from clrobust.data import to_float

    hits = []
    for i, lo in enumerate(range(0, len(data), batch_size)):
        x, y = to_float(data.images[lo:lo + batch_size]), data.labels[lo:lo + batch_size]
        if spec is not None:
            x = attack_batch(spec, net, x, y, batch_index=i)
        with torch.no_grad():
            hits.append(net(x).argmax(1) == y)
    return torch.cat(hits)


def test_audit_counts_recomputed_from_attack_batch(tmp_path, trained_checkpoint, one_thread):
    """Every row of an audit of a trained model equals a per-point recount made here with attack_batch."""
    from clrobust.attacks import AttackSpec
    from clrobust.audit import AuditSettings, run_audit
    from clrobust.checkpoints import load as load_model
    from clrobust.data import load_dataset

    N = 24
    eps = (2 / 255,)
    settings = AuditSettings(models=[str(trained_checkpoint)], eps=eps, n_samples=N, batch_size=16,
                             attacks=("fgsm", "pgd20", "apgd-ce", "tm1-pgd20"), seed=3)
    out = tmp_path / "audit"
    report = run_audit(settings, out, progress=False).to_dict()

    net = load_model(str(trained_checkpoint)).network
    data = load_dataset("cifar10-mini", "test").sample(N)  # the job's default: class-stratified, sample seed 0
    specs = {"fgsm": ("fgsm", 1), "pgd20": ("pgd", 20), "apgd-ce": ("apgd", 100), "tm1-pgd20": ("rep", 20)}

    def correct(spec=None):  # audit's batches: 16, then 8 (no folding)
        return _recount(net, data, spec, 16)

    clean = correct()
    rows = {(r["attack"], r["eps"]): r for r in report["rows"]}
    assert len(rows) == len(report["rows"]) == 4 + 1
    for e in eps:
        per = {a: correct(AttackSpec(name, e, steps, seed=3, n_classes=10)) & clean
               for a, (name, steps) in specs.items()}
        for a, hits in per.items():
            r = rows[(a, e)]
            assert r["robust_accuracy"] == hits.sum().item() / N, (a, e)
            assert r["clean_accuracy"] == clean.sum().item() / N and r["n"] == N
            assert r["threat_model"] == ("I" if a == "tm1-pgd20" else "II")
        worst = per["fgsm"] & per["pgd20"] & per["apgd-ce"]  # threat model II only
        assert rows[("worst-case (II)", e)]["robust_accuracy"] == worst.sum().item() / N
    # The numbers are not trivial: a trained model, robust accuracy strictly between 0 and clean.
    w = rows[("worst-case (II)", 2 / 255)]["robust_accuracy"]
    assert clean.float().mean() > 0.2 and 0 < w < clean.float().mean()

    # The files say the same as the returned report.
    assert json.loads((out / "report.json").read_text())["rows"] == json.loads(json.dumps(report["rows"]))
    with open(out / "report.csv", newline="") as fh:
        csv_rows = list(csv.DictReader(fh))
    assert len(csv_rows) == len(report["rows"])
    for got, want in zip(csv_rows, report["rows"]):
        assert got["model"] == want["model"] and got["attack"] == want["attack"] and got["norm"] == want["norm"]
        assert float(got["robust_accuracy"]) == want["robust_accuracy"]
        assert float(got["clean_accuracy"]) == want["clean_accuracy"] and float(got["eps"]) == want["eps"]
    md = (out / "report.md").read_text().splitlines()
    table = [ln for ln in md[:md.index("", 2)] if ln.startswith("|")]  # the first table: robust accuracy
    # then what the checkpoint's metadata records of its training (the fixture: 4 epochs of 16 batches)
    training = [[c.strip() for c in ln.strip("|").split("|")] for ln in md[md.index("", 2):] if ln.startswith("|")]
    assert training[0] == ["model", "trained on", "epochs", "seed", "device", "optimiser steps", "train time"]
    assert training[2][:6] == ["trained", "cifar10-mini train split, first 1024", "4", "0", "cpu x1", "64"]
    assert training[2][6].endswith(" min") and len(training) == 3
    head = [c.strip() for c in table[0].strip("|").split("|")]
    assert head[:2] == ["model", "clean"] and len(head) == 2 + len(report["rows"])
    body = [[c.strip() for c in ln.strip("|").split("|")] for ln in table[2:]]
    c_lo, c_hi = _wilson(int(clean.sum()), N)
    assert len(body) == 1 and body[0][0] == "trained"
    assert body[0][1] == f"{clean.float().mean().item():.1%} [{c_lo:.1%}, {c_hi:.1%}]"
    for col, cell in zip(head[2:], body[0][2:]):
        attack, norm, eps_text = col.rsplit(" ", 2)
        row = next(r for r in report["rows"] if (r["attack"], r["norm"], r["eps_text"]) == (attack, norm, eps_text))
        lo, hi = _wilson(round(row["robust_accuracy"] * N), N)
        assert cell == f"{row['robust_accuracy']:.1%} [{lo:.1%}, {hi:.1%}]"
        # Every number carries its interval, in every file: the 95% Wilson interval over the N images.
        assert (row["robust_ci_low"], row["robust_ci_high"]) == pytest.approx((lo, hi), abs=1e-12)
        assert (row["clean_ci_low"], row["clean_ci_high"]) == pytest.approx((c_lo, c_hi), abs=1e-12)
        got = next(g for g in csv_rows if (g["attack"], g["eps_text"]) == (attack, eps_text))
        assert float(got["robust_ci_low"]) == pytest.approx(lo) and float(got["robust_ci_high"]) == pytest.approx(hi)
    assert f"Robust accuracy on {N} cifar10-mini test images ({data.chosen})" in md[0]
    assert "class-stratified, sample seed 0" in data.chosen
    _assert_picture(out / "robust_accuracy_vs_eps.png")


@pytest.mark.slow
def test_pgd_with_restarts_is_robust_only_where_every_restart_fails(tmp_path, trained_checkpoint, one_thread):
    """pgdNxR: R PGD-N runs, seeds seed..seed+R-1, a point robust only if all fail; recounted here."""
    from clrobust.attacks import AttackSpec
    from clrobust.audit import AuditSettings, run_audit
    from clrobust.checkpoints import load as load_model
    from clrobust.data import load_dataset

    N = 24
    settings = AuditSettings(models=[str(trained_checkpoint)], eps=(8 / 255,), n_samples=N, batch_size=16,
                             attacks=("pgd20", "pgd4x3"), seed=3)
    report = run_audit(settings, tmp_path / "audit", progress=False).to_dict()
    net = load_model(str(trained_checkpoint)).network
    data = load_dataset("cifar10-mini", "test").sample(N)

    def correct(spec=None):
        return _recount(net, data, spec, 16)

    clean = correct()
    runs = [correct(AttackSpec("pgd", 8 / 255, 4, seed=3 + r)) & clean for r in range(3)]
    rows = {r["attack"]: r for r in report["rows"]}
    assert rows["pgd4x3"]["robust_accuracy"] == (runs[0] & runs[1] & runs[2]).sum().item() / N
    assert rows["pgd4x3"]["robust_accuracy"] <= min(r.sum().item() for r in runs) / N
    worst = (runs[0] & runs[1] & runs[2]) & (correct(AttackSpec("pgd", 8 / 255, 20, seed=3)) & clean)
    assert rows["worst-case (II)"]["robust_accuracy"] == worst.sum().item() / N
    assert report["attacks"]["pgd4x3"] == {"spec": "pgd", "steps": 4, "restarts": 3}
    assert report["attacks"]["pgd20"] == {"spec": "pgd", "steps": 20, "restarts": 1}


@pytest.mark.parametrize("name", ["pgd0x3", "pgd5x0", "pgd5x", "pgdx10", "cw"])
def test_a_malformed_audit_attack_is_refused(name):
    from clrobust.audit import AuditSettings

    with pytest.raises(ClrobustError, match=f"attack '{name}'.*pgd50x10"):
        AuditSettings(models=["m"], attacks=(name,))


def _wilson(k: int, n: int, z: float = 1.959963984540054):
    """The Wilson score interval, written out in float64 (an independent reference)."""
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * (p * (1 - p) / n + z * z / (4 * n * n)) ** 0.5
    return max(0.0, centre - half), min(1.0, centre + half)


def test_a_report_written_before_intervals_reads_with_intervals_from_its_counts():
    from clrobust.audit import AuditRow

    row = AuditRow("m", "pgd20", "Linf", 8 / 255, "8/255", "II", 0.375, 0.125, 200)
    assert (row.clean_ci_low, row.clean_ci_high) == pytest.approx(_wilson(75, 200), abs=1e-12)
    assert (row.robust_ci_low, row.robust_ci_high) == pytest.approx(_wilson(25, 200), abs=1e-12)
    lo, hi = _wilson(25, 200)
    assert row.robust_text() == f"12.5% [{lo:.1%}, {hi:.1%}]"
    assert AuditRow(**{**row.__dict__, "robust_ci_low": float("nan")}).robust_ci_low == row.robust_ci_low


def _assert_picture(path):
    """A real figure: a sensible size and more than a blank canvas."""
    assert_real_png(path, min_side=200, min_colours=21, ink=False)


def test_autoattack_is_the_standard_suite_and_bounded_by_apgd(tmp_path, tiny_checkpoints, one_thread):
    """AutoAttack's row: the reference step counts recorded, never above its own first attack (APGD-CE)."""
    from clrobust.audit import AuditSettings, run_audit

    report = run_audit(AuditSettings(models=[str(tiny_checkpoints[0])], eps=(8 / 255,), n_samples=16, batch_size=8,
                                     attacks=("apgd-ce", "autoattack")), tmp_path / "aa", progress=False).to_dict()
    rows = {r["attack"]: r for r in report["rows"]}
    assert set(rows) == {"apgd-ce", "autoattack", "worst-case (II)"}
    assert rows["autoattack"]["robust_accuracy"] <= rows["apgd-ce"]["robust_accuracy"]
    assert rows["worst-case (II)"]["robust_accuracy"] == min(r["robust_accuracy"] for r in rows.values())
    assert "APGD-CE 100 steps, APGD-T 100 steps, FAB-T 100 steps, Square 5000" in report["autoattack"]


def test_worst_case_is_the_per_point_and_of_threat_model_ii_with_clean(tmp_path, tiny_checkpoints, monkeypatch):
    """Aggregation alone, on designed per-point outcomes: a point counts as robust only when it is clean-correct
    and survives every threat-model-II attack; the label-free attack (I) never enters the worst case."""
    from clrobust import audit

    outcome = {None: [1, 1, 1, 1, 1, 0],   # clean: the last point is wrong
               "fgsm": [0, 1, 1, 1, 1, 1],  # breaks point 0; "right" on the clean-wrong point
               "pgd": [1, 0, 1, 1, 1, 1],   # breaks point 1
               "apgd": [1, 1, 1, 1, 1, 1],
               "rep": [1, 1, 0, 0, 1, 1]}   # threat model I breaks points 2, 3

    def designed(net, spec, data, bs, device, dist, desc, progress):
        return torch.tensor(outcome[None if spec is None else spec.name], dtype=torch.int64)

    monkeypatch.setattr(audit, "_correct", designed)
    report = audit.run_audit(audit.AuditSettings(models=[str(tiny_checkpoints[0])], eps=(8 / 255,), n_samples=6,
                                                 attacks=("fgsm", "pgd20", "apgd-ce", "tm1-pgd20")),
                             tmp_path / "a", progress=False).to_dict()
    rows = {r["attack"]: r for r in report["rows"]}
    assert rows["fgsm"]["clean_accuracy"] == 5 / 6
    assert rows["fgsm"]["robust_accuracy"] == 4 / 6  # point 0 broken, point 5 was never correct
    assert rows["tm1-pgd20"]["robust_accuracy"] == 3 / 6
    assert rows["worst-case (II)"]["robust_accuracy"] == 3 / 6  # points 2, 3, 4: not 1/6 (tm1 excluded)


@pytest.mark.filterwarnings("ignore:cifar10 files under")
def test_the_cache_is_keyed_by_the_images_not_the_folder_name(tmp_path, tiny_checkpoints, capsys):
    """Same --data-root, same options, other files in it: the cached per-point results are not reused."""
    import pickle
    import shutil

    from clrobust.cli import main
    from tests.test_data import _write_cifar

    root = tmp_path / "data"
    _write_cifar(root, n_per_batch=8)
    args = ["audit", str(tiny_checkpoints[0]), "--data", "cifar10", "--data-root", str(root), "--eps", "8/255",
            "--attacks", "fgsm", "--batch-size", "8", "--no-progress", "--out", str(tmp_path / "audit")]

    def audit(*extra):
        main([*args, *extra])  # returns on success, SystemExit on failure
        return json.loads((tmp_path / "audit" / "audit-cache.json").read_text()), capsys.readouterr().err

    first, _ = audit()
    batch = root / "cifar-10-batches-py" / "test_batch"
    b = pickle.loads(batch.read_bytes())
    b["data"] = 255 - b["data"]  # other pixels, same labels, same path
    batch.write_bytes(pickle.dumps(b))
    second, err = audit("--overwrite")
    assert "cached results are of other images; recomputing" in err
    assert second["data"] != first["data"] and second["settings_key"] == first["settings_key"]
    shutil.rmtree(tmp_path / "audit")
    fresh, _ = audit()
    assert fresh["results"] == second["results"]  # what was recomputed is what a fresh audit gives


@pytest.mark.slow
def test_probe_layers_and_figures_in_two_and_three_processes_equal_one(tmp_path, tiny_checkpoints):
    """gloo, 2 and 3 processes: probe-layers' features and accuracies and the at-probes figure's numbers are
    the single-process ones (16 test images in batches of 8: the third process records no test batch and
    still joins every sum); only rank 0 writes (one summary printed, one output folder)."""
    a, b = map(str, tiny_checkpoints)
    small = ["--n-samples", "16", "--n-train", "24", "--batch-size", "8", "--steps", "1", "--layers",
             "stem,layer2.*,avgpool", "--no-progress"]
    jobs = {"probes": (["probe-layers", a, *small], "probes.json"),
            "figures": (["figures", "at-probes", "--models", f"{a},{b}", *small], "at-probes.json")}
    for name, (args, result) in jobs.items():
        code, text = run([*args, "--out", str(tmp_path / f"{name}1")])
        assert code == 0, text
        want = json.loads((tmp_path / f"{name}1" / result).read_text())
        for processes in (2, 3):
            out = tmp_path / f"{name}{processes}"
            code, text = torchrun([*args, "--out", str(out)], processes=processes)
            assert code == 0, text
            got = json.loads((out / result).read_text())
            if name == "probes":
                assert text.count("Results in") == 1
                for key in ("train_accuracy", "clean_accuracy", "adversarial_accuracy", "model_accuracy",
                            "feature_dims", "n_train", "n_test"):
                    assert got[key] == want[key], key
                one, = (tmp_path / "probes1" / "features").glob("*.npz")
                many, = (out / "features").glob("*.npz")
                assert many.name == one.name  # the same cache key
                with np.load(one) as f1, np.load(many) as fn:
                    assert sorted(f1.files) == sorted(fn.files)
                    for k in f1.files:
                        np.testing.assert_array_equal(fn[k], f1[k])  # every image's features, exactly
            else:
                assert text.count("files in") == 1
                assert_same_numbers(got["panels"], want["panels"])
                for key in want["probes"]:
                    for m in ("train_accuracy", "clean_accuracy", "adversarial_accuracy", "model_accuracy"):
                        assert got["probes"][key][m] == want["probes"][key][m], (key, m)


def assert_same_numbers(got, want, where="", atol=1e-9):
    """``got`` has ``want``'s structure, its strings and its numbers within ``atol`` (CKA sums in another order)."""
    assert type(got) is type(want), where
    if isinstance(want, dict):
        assert got.keys() == want.keys(), where
        for k in want:
            assert_same_numbers(got[k], want[k], f"{where}.{k}", atol)
    elif isinstance(want, list):
        assert len(got) == len(want), where
        for i, (g, w) in enumerate(zip(got, want)):
            assert_same_numbers(g, w, f"{where}[{i}]", atol)
    elif isinstance(want, float):
        assert abs(got - want) <= atol, (where, got, want)
    else:
        assert got == want, where


def test_the_training_evaluation_counts_robust_accuracy_as_the_audit_does(trained_checkpoint, one_thread):
    """robustness.accuracy (the numbers in every checkpoint and the zoo manifest) counts an image as robust only
    when it is right both clean and attacked. The label-free representation attack moves some misclassified
    images to their class; they must not count (they did, and the manifest's threat-model-I numbers ran up to
    8 points above the audit's)."""
    from clrobust.attacks import AttackSpec
    from clrobust.checkpoints import load as load_model
    from clrobust.data import load_dataset
    from clrobust.robustness import accuracy

    net = load_model(str(trained_checkpoint)).network
    data = load_dataset("cifar10-mini", "test").subset(96)
    spec = AttackSpec("rep", 16 / 255, 3, seed=1, n_classes=10)
    got = accuracy(net, data, spec, batch_size=32)
    c, a = _recount(net, data, None, 32), _recount(net, data, spec, 32)
    assert (a & ~c).any()  # the case that tells the two counts apart happens here
    assert got["clean"] == c.sum().item() / 96 and got["adversarial"] == (a & c).sum().item() / 96
