"""Outputs are all or nothing: staging beside --out, a manifest, a lock, --overwrite removes only its own files."""

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Dict

import pytest

from clrobust.errors import ClrobustError
from clrobust.results import MANIFEST, OutputFolder, Result


@dataclass
class _Toy(Result):
    SCHEMA: ClassVar[str] = "clrobust.toy/1"
    name: str
    value: int

    def json_name(self) -> str:
        return f"{self.name}.json"

    def to_dict(self) -> Dict[str, Any]:
        return {"schema": self.SCHEMA, "name": self.name, "value": self.value}

    @classmethod
    def from_dict(cls, d):
        return cls(d["name"], d["value"])

    def figures(self):
        return {f"{self.name}.png": lambda path: path.write_bytes(b"png")}


def _files(folder: Path) -> Dict[str, bytes]:
    return {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}


def test_commit_moves_every_file_in_and_writes_the_manifest_last(tmp_path):
    out = tmp_path / "out"
    with OutputFolder(out, ["a.json"], overwrite=False) as folder:
        assert folder.staging.is_dir() and out.is_dir() and not (out / MANIFEST).exists()
        folder.commit([_Toy("a", 1)], {"k": 1}, seed=3)
    assert sorted(_files(out)) == ["a.json", "a.png", MANIFEST, "settings.json"]
    manifest = json.loads((out / MANIFEST).read_text())
    assert manifest["complete"] and manifest["files"] == ["a.json", "a.png", "settings.json", MANIFEST]
    assert not folder.staging.exists() and not list(tmp_path.glob(".out.*"))  # no staging, no lock left
    assert _Toy.read(out / "a.json") == _Toy("a", 1)


def test_a_complete_result_is_refused_untouched_and_overwrite_removes_only_its_own_files(tmp_path):
    out = tmp_path / "out"
    with OutputFolder(out, [], overwrite=False) as folder:
        folder.commit([_Toy("old-model", 1)])
    (out / "notes.txt").write_text("the user's own file")
    (out / "features").mkdir()
    before = _files(out)
    with pytest.raises(ClrobustError, match="already holds results .*--overwrite"):
        with OutputFolder(out, [], overwrite=False):
            pass
    assert _files(out) == before
    with OutputFolder(out, [], overwrite=True) as folder:
        folder.commit([_Toy("new-model", 2)])
    # The stale figure and JSON of the earlier model are gone; the user's file and folder stay.
    assert sorted(_files(out)) == [MANIFEST, "new-model.json", "new-model.png", "notes.txt"]
    assert (out / "features").is_dir()


def test_an_interrupted_run_leaves_nothing_that_looks_complete(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        with OutputFolder(out, ["a.json"], overwrite=False):
            raise KeyboardInterrupt
    assert not out.exists() and not list(tmp_path.glob(".out.*"))  # the folder it created is gone again
    deep = tmp_path / "a" / "b" / "out"
    with pytest.raises(KeyboardInterrupt):
        with OutputFolder(deep, ["a.json"], overwrite=False):
            raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []  # parents it created too
    out.mkdir()
    (out / "mine.txt").write_text("keep")
    with pytest.raises(KeyboardInterrupt):
        with OutputFolder(out, ["a.json"], overwrite=False):
            raise KeyboardInterrupt
    assert _files(out) == {"mine.txt": b"keep"} and not list(tmp_path.glob(".out.*"))  # a folder it found stays
    with OutputFolder(out, ["a.json"], overwrite=False) as folder:  # the lock was released
        folder.commit([_Toy("a", 1)])
    assert (out / MANIFEST).exists()


def test_a_second_run_on_the_same_out_is_refused_while_the_first_holds_it(tmp_path):
    out = tmp_path / "out"
    with OutputFolder(out, [], overwrite=False):
        with pytest.raises(ClrobustError, match="another clrobust run is writing --out"):
            with OutputFolder(out, [], overwrite=True):
                pass


@pytest.mark.parametrize("case", ["out-is-a-file", "under-a-file", "read-only-parent", "corrupt-manifest"])
def test_bad_out_folders_fail_before_any_work(tmp_path, case):
    if case == "read-only-parent" and os.geteuid() == 0:
        pytest.skip("root writes into read-only folders")
    (tmp_path / "f").write_text("x")
    out = {"out-is-a-file": tmp_path / "f", "under-a-file": tmp_path / "f" / "sub",
           "read-only-parent": tmp_path / "ro" / "out", "corrupt-manifest": tmp_path / "c"}[case]
    if case == "read-only-parent":
        (tmp_path / "ro").mkdir(mode=0o500)
    if case == "corrupt-manifest":
        out.mkdir()
        (out / MANIFEST).write_text("{not json")
    with pytest.raises(ClrobustError) as info:
        with OutputFolder(out, [], overwrite=False):
            raise AssertionError("work started")
    assert "\n" not in str(info.value) and "--out" in str(info.value)


@pytest.mark.slow
def test_sigterm_exits_143_in_one_line_and_leaves_no_result(tmp_path):
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    p = subprocess.Popen([sys.executable, "-m", "clrobust", "compare-layers", "--n-samples", "846",
                          "--steps", "20", "--no-progress", "--out", str(out)],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    staging = tmp_path / ".out.partial"
    deadline = time.time() + 120
    while not staging.exists() and time.time() < deadline and p.poll() is None:
        time.sleep(0.05)
    assert staging.exists(), p.communicate()
    time.sleep(0.5)
    p.send_signal(signal.SIGTERM)
    stdout, stderr = p.communicate(timeout=120)
    assert p.returncode == 143, (stdout, stderr)
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("terminated") and "Traceback" not in stderr
    assert not staging.exists() and not list(out.glob("*.json")) and not list(out.glob("*.png"))


def test_nan_weights_and_non_finite_activations_stop_the_job_named(tmp_path, tiny_checkpoints):
    """A model with NaN weights is refused at load, in every command (audit reported 12.5% before);
    NaN appearing in a layer stops the activations stage with the model and layer named."""
    import torch

    from clrobust.activations import Stage
    from clrobust.attacks import AttackSpec
    from clrobust.audit import AuditSettings, run_audit
    from clrobust.checkpoints import load, save_network
    from clrobust.data import load_dataset

    net = load(str(tiny_checkpoints[0])).network
    with torch.no_grad():
        net.encoder.stem.conv.weight[0, 0, 0, 0] = float("nan")
    bad = save_network(tmp_path / "nan-model", net, {})
    with pytest.raises(ClrobustError, match=r"has NaN or Inf weights \(encoder.stem.conv.weight\)"):
        run_audit(AuditSettings(models=[str(bad)], eps=(8 / 255,), attacks=("fgsm",), n_samples=8),
                  tmp_path / "audit", progress=False)
    assert not (tmp_path / "audit" / "report.json").exists()

    good = load(str(tiny_checkpoints[0])).network
    data = load_dataset("cifar10-mini", "test").subset(8)
    data.images[3] = 0
    stage = Stage({"m": good}, {"m": ["stem", "avgpool"]}, AttackSpec("none", 0.0, 1), "cpu")
    good.encoder.stem.register_forward_hook(lambda mod, args, out: out / (out - out))  # 0/0 = NaN
    with pytest.raises(ClrobustError, match="model m, clean inputs: layer .stem. produced NaN"):
        for batch in stage.batches(data, 8, progress=False):
            list(batch.recordings)


@pytest.mark.parametrize("device,message", [("nonsense", "is not a device"), ("tpu", "is not a device"),
                                            ("mps", "runs on cpu or cuda"), ("cuda:99", "--device")])
def test_a_bad_device_is_one_line_before_any_work(tmp_path, capsys, device, message):
    from clrobust.cli import main

    with pytest.raises(SystemExit) as info:
        main(["compare-layers", "--device", device, "--out", str(tmp_path / "o"), "--no-progress"])
    err = capsys.readouterr().err
    assert info.value.code == 2 and message in err and len(err.strip().splitlines()) == 1, err
    assert "use --device cpu" in err or "GPU(s)" in err or "use auto, cpu, cuda or cuda:N" in err
    assert not (tmp_path / "o").exists()


def test_device_auto_picks_cuda_when_there_is_one_and_records_the_real_device(monkeypatch):
    import torch

    from clrobust.cli.options import check_device, resolve_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == "cpu" and check_device(None, None, "auto") == "cpu"
    assert check_device(None, None, "AUTO") == "cpu" and check_device(None, None, "cpu") == "cpu"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert resolve_device("auto") == "cuda" and check_device(None, None, "auto") == "cuda"
    assert check_device(None, None, "cuda:1") == "cuda:1"


def test_every_compute_command_defaults_to_device_auto():
    from clrobust.cli import cli

    for name in ("compare-layers", "probe-layers", "figures", "audit", "train"):
        opt = next(p for p in cli.commands[name].params if p.name == "device")
        assert opt.default == "auto", name


def test_threads_option_sets_torch_threads_and_defaults_to_physical_cores(capsys, monkeypatch):
    import os

    import torch

    from clrobust.cli import main, physical_cores

    before = torch.get_num_threads()
    try:
        main(["--threads", "1", "zoo"])
        assert torch.get_num_threads() == 1
        monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
        main(["zoo"])
        assert torch.get_num_threads() == physical_cores()
        assert 1 <= physical_cores() <= (os.cpu_count() or 1)
        monkeypatch.setenv("LOCAL_WORLD_SIZE", str(2 * physical_cores()))  # torchrun: the cores are shared
        main(["zoo"])
        assert torch.get_num_threads() == 1
        monkeypatch.setenv("LOCAL_WORLD_SIZE", "1")
        with pytest.raises(SystemExit) as exc:
            main(["--threads", "0", "zoo"])
        assert exc.value.code == 2 and "--threads" in capsys.readouterr().err
    finally:
        torch.set_num_threads(before)


def test_tf32_is_off_unless_asked_and_settings_record_the_arithmetic(capsys):
    import torch

    from clrobust.cli import main
    from clrobust.results import settings_record

    try:
        main(["--tf32", "zoo"])
        assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
        assert settings_record({}, 0)["arithmetic"]["tf32_matmul"] is True
        main(["zoo"])
        assert not torch.backends.cuda.matmul.allow_tf32 and not torch.backends.cudnn.allow_tf32
        rec = settings_record({"x": 1}, 3)["arithmetic"]
        assert rec == {"threads": torch.get_num_threads(), "tf32_matmul": False, "tf32_cudnn": False,
                       "cka_sums": "float64"}
    finally:
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False


@pytest.mark.slow
def test_the_gpu_check_is_a_dry_run_without_a_gpu():
    import subprocess
    import sys

    p = subprocess.run(["bash", "benchmarks/gpu_check.sh"], capture_output=True, text=True,
                       env={**__import__("os").environ, "CUDA_VISIBLE_DEVICES": "", "PYTHON": sys.executable,
                            "PYTHONPATH": "."})
    assert p.returncode == 0, p.stderr
    assert "dry run" in p.stdout and "--rehearse" in p.stdout and p.stdout.count("  - ") >= 8
