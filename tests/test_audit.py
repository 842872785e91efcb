"""clrobust audit (report, worst case, resume, probe for head-less encoders) and
2-process gloo runs of audit and compare-layers equal to one process."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

import numpy as np
import torch

from tests.conftest import tiny_network


def run(args, env=None):
    p = subprocess.run([sys.executable, "-m", "clrobust", *args], capture_output=True, text=True, env=env)
    return p.returncode, p.stdout + p.stderr


def torchrun(args):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    p = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                        "-m", "clrobust", *args], capture_output=True, text=True, env=env)
    return p.returncode, p.stdout + p.stderr


AUDIT = ["--n-samples", "16", "--batch-size", "8", "--eps", "4/255,8/255", "--no-progress"]


def test_audit_report_worst_case_and_resume(tmp_path, tiny_checkpoints):
    a, b = map(str, tiny_checkpoints)
    out = tmp_path / "audit"
    code, text = run(["audit", a, b, *AUDIT, "--attacks", "fgsm,pgd20,autoattack,tm1-pgd20", "--out", str(out)])
    assert code == 0, text
    assert "| tiny0 |" in text and "report in" in text
    for name in ("report.json", "report.csv", "report.md", "robust_accuracy_vs_eps.png", "audit-cache.json"):
        assert (out / name).exists(), name
    rep = json.loads((out / "report.json").read_text())
    assert rep["n_samples"] == 16 and rep["seed"] == 0 and "torch" in rep["versions"]
    rows = rep["rows"]
    assert {r["model"] for r in rows} == {"tiny0", "tiny1"}
    for r in rows:
        assert 0 <= r["robust_accuracy"] <= r["clean_accuracy"] <= 1
    cache = json.loads((out / "audit-cache.json").read_text())["results"]
    for m in ("tiny0", "tiny1"):
        clean = np.array(cache[m]["clean"])
        for eps in ("4/255", "8/255"):
            by = {r["attack"]: r for r in rows if r["model"] == m and r["eps_text"] == eps}
            assert set(by) == {"fgsm", "pgd20", "autoattack", "tm1-pgd20", "worst-case (II)"}
            # Worst case is the per-point AND of the threat-model-II attacks (independent recount).
            e = float(eval(eps))
            per = [np.array(cache[m][f"{att}|Linf|{e:.10g}"]) & clean for att in ("fgsm", "pgd20", "autoattack")]
            expect = np.logical_and.reduce(per).mean()
            assert abs(by["worst-case (II)"]["robust_accuracy"] - expect) < 1e-12
            assert by["worst-case (II)"]["robust_accuracy"] <= min(by[k]["robust_accuracy"]
                                                                   for k in ("fgsm", "pgd20", "autoattack"))

    # Re-running resumes from the cache (no attack recomputed) and gives the same report.
    cache_before = (out / "audit-cache.json").read_text()
    code, text = run(["audit", a, b, *AUDIT, "--attacks", "fgsm,pgd20,autoattack,tm1-pgd20", "--out", str(out)])
    assert code == 0, text
    assert (out / "audit-cache.json").read_text() == cache_before
    assert json.loads((out / "report.json").read_text())["rows"] == rows

    # Different settings in the same folder: refused in one line.
    code, text = run(["audit", a, *AUDIT[:-3], "--eps", "2/255", "--attacks", "fgsm", "--out", str(out)])
    assert code == 2 and "--overwrite" in text and "Traceback" not in text and len(text.strip().splitlines()) == 1


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
    code, text = run(["audit", str(model), *args, "--out", str(out)])
    assert code == 0 and "weights differ" in text, text
    after = json.loads((out / "audit-cache.json").read_text())["results"]["m"]
    assert after["weights"] != before["weights"]
    ref = tmp_path / "ref"  # independent fresh audit of the new weights
    assert run(["audit", str(b), *args, "--out", str(ref)])[0] == 0
    fresh = json.loads((ref / "audit-cache.json").read_text())["results"]["tiny1"]
    assert after == fresh


def test_audit_bad_eps_and_attack_are_one_line_errors(tmp_path, tiny_checkpoints):
    a = str(tiny_checkpoints[0])
    for args, needle in ((["--eps", "8"], "eps"), (["--attacks", "cw"], "unknown attack")):
        code, text = run(["audit", a, "--out", str(tmp_path / "x"), *args])
        assert code == 2 and needle in text and "Traceback" not in text, text


def test_headless_checkpoint_gets_a_linear_probe(tmp_path):
    """A SupContrast-layout checkpoint has no classifier: audit fits a probe on train features."""
    net = tiny_network(3)
    sd = {f"encoder.{k.replace('stem.conv.', 'conv1.').replace('stem.bn.', 'bn1.')}": v
          for k, v in net.encoder.state_dict().items()}
    sd.update({"head.0.weight": torch.randn(32, 32), "head.0.bias": torch.randn(32),
               "head.2.weight": torch.randn(16, 32), "head.2.bias": torch.randn(16)})
    path = tmp_path / "supcon_last.pth"
    torch.save({"opt": argparse.Namespace(model="resnet18"), "model": sd, "epoch": 3}, path)
    out = tmp_path / "audit"
    code, text = run(["audit", str(path), "--n-samples", "16", "--batch-size", "8", "--eps", "8/255",
                      "--attacks", "fgsm", "--probe-train", "96", "--no-progress", "--out", str(out)])
    assert code == 0, text
    rep = json.loads((out / "report.json").read_text())
    info = rep["models"]["supcon_last"]
    assert "linear probe" in info["classifier"] and info["probe_train_accuracy"] > 0.3
    assert all(r["robust_accuracy"] <= r["clean_accuracy"] for r in rep["rows"])


def test_two_processes_equal_one(tmp_path, tiny_checkpoints):
    """gloo, 2 processes: compare-layers and audit give the single-process numbers."""
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
    code, text = torchrun(aud + ["--out", str(tmp_path / "a2")])
    assert code == 0, text
    rows1, rows2 = (json.loads((tmp_path / d / "report.json").read_text())["rows"] for d in ("a1", "a2"))
    assert rows1 == rows2
