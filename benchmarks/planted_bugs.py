"""Plant known bugs in a copy of the package and check that the test suite catches each one.

Each bug is a textual patch of one package file. For every bug, the repository is
copied (without .git, the virtual environment and mutmut's folder) into a temporary
folder, the patch is applied there, and the tests that exercise the code are run in
that copy (``python -m pytest`` puts the copy's ``clrobust`` first on the path; the
command line processes the tests start import it too). A bug is *caught* when pytest
fails. The working tree is never modified.

    python benchmarks/planted_bugs.py              # every bug
    python benchmarks/planted_bugs.py --only hooks-train-mode,compare-first-model-attack
    python benchmarks/planted_bugs.py --list

Exit status 1 when any bug survives. Slow (a pytest run per bug); not part of CI.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import List, Sequence, Tuple

ROOT = Path(__file__).resolve().parents[1]
IGNORE = shutil.ignore_patterns(".git", ".venv", "mutants", "__pycache__", ".pytest_cache", "*.egg-info",
                                ".coverage*", "compare-layers-out", "runs", "cifar10-jpeg")


@dataclass(frozen=True)
class Bug:
    name: str
    what: str
    file: str
    old: str
    new: str
    tests: Tuple[str, ...]


COMPARE = "tests/test_compare.py::test_every_model_is_attacked_with_its_own_examples"
AUDIT = "tests/test_audit.py::test_worst_case_is_the_per_point_and_of_threat_model_ii_with_clean"

BUGS: List[Bug] = [
    # The four planted bugs that once survived the suite.
    Bug("hooks-train-mode", "recording no longer switches the model to eval mode",
        "clrobust/hooks.py", "        self.model.eval()\n        try:\n            with torch.no_grad():\n"
        "                self.output = self.model(x)",
        "        try:\n            with torch.no_grad():\n                self.output = self.model(x)",
        ("tests/test_hooks.py",)),
    Bug("mapping-keeps-last", "of two differing copies of a key, the last is kept instead of the first",
        "clrobust/checkpoints/mapping.py",
        "            if not same:\n                out.notes.append(f\"{key} differs from {out.sources[k]} "
        "(both map to {k}); kept the first.\")\n            continue",
        "            if not same:\n                out.notes.append(f\"{key} differs from {out.sources[k]} "
        "(both map to {k}); kept the first.\")\n                target[k] = value\n            continue",
        ("tests/test_mapping.py", "tests/test_formats.py")),
    Bug("compare-first-model-attack", "every model is attacked with the examples crafted against the first",
        "clrobust/activations.py",
        "out = {lab: craft(self.models[lab]) for lab in only}",
        "out = {lab: craft(next(iter(self.models.values()))) for lab in only}",
        (COMPARE,)),
    Bug("train-at-without-attack", "the adversarial scenarios train without any attack",
        "clrobust/train/trainer.py",
        "    def adversarial_pretraining(self) -> bool:\n        return self.scenario != \"st\"",
        "    def adversarial_pretraining(self) -> bool:\n        return False",
        ("tests/test_train.py",)),
    Bug("train-pgd-returns-input", "the training attack returns its input unchanged",
        "clrobust/attacks.py",
        "    x = x.detach()\n    if eps == 0:\n        return x.clone()\n    if start is not None:",
        "    x = x.detach()\n    if True:\n        return x.clone()\n    if start is not None:",
        ("tests/test_train.py",)),
    # Further plausible bugs in the seams between stages.
    Bug("compare-batch-seed", "every batch is attacked with the seed of batch 0",
        "clrobust/activations.py", "attack_batch(attack, net, xs[0], ys[0], batch_index=indices[0])",
        "attack_batch(attack, net, xs[0], ys[0], batch_index=0)", (COMPARE,)),
    Bug("hooks-no-copy", "recorded outputs are not copied (in-place operations change them)",
        "clrobust/hooks.py", "self._out[name] = output.detach().clone()", "self._out[name] = output.detach()",
        ("tests/test_hooks.py",)),
    Bug("idle-rank-skips-collective", "a process that owned no batch skips the all-reduce",
        "clrobust/compare.py", "            accs[e].ensure_state(len(names[e[0][0]]), len(names[e[1][0]]))\n",
        "            pass\n", ("tests/test_audit.py::test_a_process_without_a_batch_joins_every_collective",)),
    Bug("convert-forgets-headless", "convert drops the fact that the encoder has no classifier",
        "clrobust/cli/checkpoints.py", '"has_classifier": lm.has_classifier, ', "",
        ("tests/test_pipeline.py",)),
    Bug("audit-worst-case-with-tm1", "the worst case also takes the label-free attack",
        "clrobust/audit.py", "            if attack != \"tm1-pgd20\":\n", "            if True:\n",
        (AUDIT,)),
    Bug("audit-clean-not-anded", "robust points need not be clean-correct",
        "clrobust/audit.py", "            corr = torch.tensor(mres[key]) & clean",
        "            corr = torch.tensor(mres[key])", (AUDIT,)),
    Bug("disparity-uses-cka", "disparity reports CKA instead of 1 - CKA",
        "clrobust/cka.py", "    return 1.0 - np.diag(m)", "    return np.diag(m)", ("tests/test_cka.py",)),
    Bug("cka-biased-batches", "minibatch CKA drops the U-centring's diagonal zeroing",
        "clrobust/cka.py", "    u = k - row - row.transpose(-2, -1) + total\n    u.diagonal(dim1=-2, dim2=-1).zero_()",
        "    u = k - row - row.transpose(-2, -1) + total", ("tests/test_cka.py",)),
    Bug("bootstrap-sign-product", "a bootstrap replicate counts as defined when the product of its self-HSICs is "
        "positive (both negative read as -CKA)", "clrobust/cka.py",
        "        defined = (self.bxx[:, :, None] > 0) & (self.byy[:, None, :] > 0)",
        "        defined = self.bxx[:, :, None] * self.byy[:, None, :] > 0", ("tests/test_uncertainty.py",)),
    Bug("fitted-first-n", "a class-ordered split's fitted set is its first N (an image folder's: a class or two)",
        "clrobust/data/__init__.py", "        if self.class_ordered:\n            return self.sample(",
        "        if False:\n            return self.sample(", ("tests/test_data.py", "tests/test_train.py")),
    Bug("clock-counts-stops", "an epoch's seconds count the time the job was stopped (kill -STOP)",
        "clrobust/train/clock.py", "    return time.monotonic() - (w.stopped if w is not None else 0.0)",
        "    return time.monotonic()", ("tests/test_train.py::test_the_work_clock_leaves_out_the_time_the_process_was_"
                                       "stopped",)),
    Bug("probe-pool-1x1", "probe features pooled to 1x1 instead of 2x2",
        "clrobust/activations.py", "POOL_SIZE = 2", "POOL_SIZE = 1", ("tests/test_probes.py",)),
    Bug("load-default-layout", "the load door leaves a CPU network in the default memory layout (1.3x slower)",
        "clrobust/checkpoints/__init__.py", "    net = fast_layout(net, torch.device(device))",
        "    net = net.to(torch.device(device))",
        ("tests/test_formats.py::test_loading_on_a_cpu_gives_channels_last_weights_with_the_float64_outputs",)),
    Bug("layout-narrow-channels-last", "narrow nets go channels-last on a CPU, where oneDNN hangs (width 4)",
        "clrobust/models/network.py", "    return (all(c.in_channels >= 16 for c in strided_1x1)",
        "    return True or (all(c.in_channels >= 16 for c in strided_1x1)",
        ("tests/test_formats.py::test_narrow_nets_keep_the_default_layout_that_onednn_handles",)),
]


def run_bug(bug: Bug, python: str, timeout: int) -> Tuple[str, float, str]:
    """Plant ``bug`` in a fresh copy, run its tests there; returns (outcome, seconds, last line)."""
    with tempfile.TemporaryDirectory(prefix="clrobust-plant-") as tmp:
        copy = Path(tmp) / "repo"
        shutil.copytree(ROOT, copy, ignore=IGNORE)
        target = copy / bug.file
        text = target.read_text()
        if text.count(bug.old) != 1:
            return "NOT PLANTED (patch does not apply)", 0.0, ""
        target.write_text(text.replace(bug.old, bug.new))
        t = time.perf_counter()
        # A session of its own, so that a timeout also ends the processes the tests started.
        proc = subprocess.Popen([python, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", *bug.tests],
                                cwd=copy, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                start_new_session=True)
        try:
            stdout, stderr = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
            return "TIMEOUT", time.perf_counter() - t, ""
        seconds = time.perf_counter() - t
        lines = [ln for ln in stdout.strip().splitlines() if ln.strip()]
        last = lines[-1] if lines else stderr.strip()[-200:]
        return ("caught" if proc.returncode != 0 else "SURVIVED"), seconds, last


def main(argv: Sequence[str] = ()) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", default="", help="comma-separated bug names (default: all)")
    ap.add_argument("--list", action="store_true", help="list the bugs and exit")
    ap.add_argument("--timeout", type=int, default=900, help="seconds per bug")
    args = ap.parse_args(list(argv) or None)
    bugs = BUGS
    if args.list:
        for b in bugs:
            print(f"{b.name:<30} {b.file:<32} {b.what}")
        return 0
    if args.only:
        wanted = {s.strip() for s in args.only.split(",") if s.strip()}
        unknown = wanted - {b.name for b in bugs}
        if unknown:
            ap.error(f"unknown bug(s): {', '.join(sorted(unknown))}; see --list")
        bugs = [b for b in bugs if b.name in wanted]
    survived = 0
    print(f"{'bug':<30} {'outcome':<10} {'seconds':>8}  tests")
    for b in bugs:
        outcome, seconds, last = run_bug(b, sys.executable, args.timeout)
        survived += outcome != "caught"
        print(f"{b.name:<30} {outcome:<10} {seconds:>8.1f}  {' '.join(b.tests)}  [{last}]", flush=True)
    print(f"{len(bugs) - survived} of {len(bugs)} planted bugs caught")
    return 1 if survived else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
