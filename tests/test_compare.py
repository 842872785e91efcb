"""compare-layers end to end on tiny checkpoints, and its one-line errors (exit 2)."""

import json

import numpy as np
import pytest



def run(args):
    """Invoke the real entry point (with its error handling); returns (exit code, output)."""
    import subprocess
    import sys


    p = subprocess.run([sys.executable, "-m", "clrobust", *args], capture_output=True, text=True)
    return p.returncode, p.stdout + p.stderr


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
                     ("tiny0", "clean", "tiny1", "clean"), ("tiny0", "adversarial", "tiny1", "adversarial")}
    for e in res["cka"]:
        m = np.asarray(e["matrix"])
        assert m.shape == (10, 10)
        assert (m > -1e-6).all() and (m < 1 + 1e-6).all()
        if e["rows"] == e["cols"]:
            np.testing.assert_allclose(np.diag(m), 1.0, atol=1e-6)
    ent = next(e for e in res["cka"] if e["rows"] == {"model": "tiny0", "input": "clean"}
               and e["cols"] == {"model": "tiny0", "input": "adversarial"})
    np.testing.assert_allclose(res["disparity"]["tiny0"], 1 - np.diag(ent["matrix"]), atol=1e-12)
    assert max(res["disparity"]["tiny0"]) > 0  # adversarial inputs really differ
    for name in ("disparity.csv", "disparity.png", "settings.json", "cka_tiny0-clean_vs_tiny1-clean.png",
                 "cka_tiny0-clean_vs_tiny0-adv.png", "cka_tiny0-adv_vs_tiny1-adv.png"):
        assert (out / name).exists(), name
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
