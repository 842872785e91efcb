"""Every scheme x scenario trains a few steps; checkpoints reload exactly; runs reproduce and resume.

The adversarial scenarios are checked to really attack: the trainer's ``pgd_maximize`` is spied on
(called in the right phases, with the configured eps / steps / step size, result within eps and
different from its input), and replacing it by the identity must lower the first batch's loss.
"""

from __future__ import annotations

import csv
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Collection, Dict, Iterable, List, Optional, Set, Tuple

import pytest
import torch

import clrobust.train.trainer as trainer_module
from clrobust.checkpoints.native import load_network
from clrobust.data import load_dataset
from clrobust.errors import ClrobustError
from clrobust.losses import nt_xent
from clrobust.models import adversarial_bn
from clrobust.train import TrainConfig, Trainer

TINY = dict(width=4, proj_dim=16, n_train=32, batch_size=16, epochs=1, classifier_epochs=1,
            eval_samples=8, eval_steps=1, attack_steps=2)
#: One batch per epoch, so a phase's epoch-1 loss is the loss of its first batch, before any update.
ONE_BATCH = {**TINY, "n_train": TINY["batch_size"]}
EPS = 8 / 255
STEPS = TINY["attack_steps"]
ALPHA = 2.5 * EPS / STEPS  # the default PGD step size

COMBOS = [(s, c, "pgd") for s in ("simclr", "supcon") for c in ("st", "at", "pat", "fat")] + \
         [("supervised", c, "pgd") for c in ("st", "at", "fat")] + [("simclr", "at", "clae"), ("supcon", "pat", "clae")]
ADVERSARIAL = [c for c in COMBOS if c[1] != "st"]
#: The combinations the fast subset (``-m "not slow"``) trains; CI trains them all.
FAST = {("simclr", "at", "pgd"), ("supervised", "at", "pgd"), ("supcon", "pat", "clae"), ("supervised", "st", "pgd")}


def _fast_few(combos: Iterable[Tuple[str, ...]], fast: Collection[Tuple[str, ...]] = FAST) -> List[Any]:
    """``combos`` as parameters, those outside ``fast`` marked slow."""
    return [pytest.param(*c, marks=() if c in fast else pytest.mark.slow) for c in combos]

State = Dict[str, torch.Tensor]
#: What :class:`Spy` wraps, taken before any test patches it.
_ATTACK, _PHASE, _PROBE = trainer_module.pgd_maximize, Trainer._phase, Trainer.fit_linear_probe


@pytest.fixture(autouse=True)
def _single_thread(one_thread: None) -> None:
    """Tiny networks: one thread each is faster than two on a busy machine."""


class _Stop(Exception):
    """Raised by :class:`Spy` to end a run after the phase it was asked to stop after."""


@dataclass
class AttackCall:
    """One call of the trainer's ``pgd_maximize``: the phase it happened in, its settings, input and result."""

    phase: Optional[str]
    eps: float
    alpha: float
    steps: int
    x: torch.Tensor
    out: torch.Tensor


@dataclass
class Spy:
    """Records the trainer's attack calls and the network's state around every phase.

    ``identity_in``: phases whose attack is replaced by the identity; ``stop_after``: a phase
    after which the run is ended (by :class:`_Stop`).
    """

    identity_in: Collection[str] = ()
    stop_after: Optional[str] = None
    calls: List[AttackCall] = field(default_factory=list)
    before: Dict[str, State] = field(default_factory=dict)
    after: Dict[str, State] = field(default_factory=dict)
    probe_acc: Optional[float] = None
    phase: Optional[str] = None

    def install(self, monkeypatch: pytest.MonkeyPatch) -> "Spy":
        def attack(loss_fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, eps: float, alpha: float,
                   steps: int, random_start: bool = True, start: Optional[torch.Tensor] = None) -> torch.Tensor:
            if self.phase in self.identity_in:
                out = x.detach()
            else:
                out = _ATTACK(loss_fn, x, eps, alpha, steps, random_start=random_start, start=start)
            self.calls.append(AttackCall(self.phase, eps, alpha, steps, x.detach().clone(), out.detach().clone()))
            return out

        def phase(trainer: Trainer, name: str, *args: Any) -> None:
            self._around(trainer, name, lambda: _PHASE(trainer, name, *args))

        def probe(trainer: Trainer) -> None:
            self._around(trainer, "linear-probe", lambda: _PROBE(trainer))
            trainer.net.eval()
            data = trainer.train_data
            with torch.no_grad():
                pred = torch.cat([trainer.net(x).argmax(1) for x, _ in data.batches(512)])
            self.probe_acc = (pred == data.labels).float().mean().item()

        monkeypatch.setattr(trainer_module, "pgd_maximize", attack)
        monkeypatch.setattr(Trainer, "_phase", phase)
        monkeypatch.setattr(Trainer, "fit_linear_probe", probe)
        return self

    def _around(self, trainer: Trainer, name: str, body: Callable[[], None]) -> None:
        self.before[name] = _state(trainer)
        self.phase = name
        body()
        self.phase = None
        self.after[name] = _state(trainer)
        if name == self.stop_after:
            raise _Stop

    def changed(self, phase: str, keys: Iterable[str]) -> Set[str]:
        """The entries among ``keys`` of the state dict that ``phase`` changed."""
        return {k for k in keys if not torch.equal(self.before[phase][k], self.after[phase][k])}


def _state(trainer: Trainer) -> State:
    return {k: v.detach().clone() for k, v in trainer.net.state_dict().items()}


def _run(monkeypatch: pytest.MonkeyPatch, cfg: TrainConfig, out: Path,
         **spy: Any) -> Tuple[Trainer, Spy, Optional[Dict[str, Any]]]:
    """Run ``cfg`` under a :class:`Spy`; returns (trainer, spy, metadata or None when stopped early)."""
    s = Spy(**spy).install(monkeypatch)
    trainer = Trainer(cfg, out, progress=False)
    try:
        meta = trainer.run()
    except _Stop:
        meta = None
    return trainer, s, meta


def _phases(scheme: str, scenario: str) -> List[str]:
    """The history's phases, in order, for one epoch of each."""
    return (["pretrain"] + (["linear-probe"] if scheme != "supervised" else [])
            + ([scenario] if scenario in ("pat", "fat") else []))


def _attack_text(scenario: str, method: str) -> str:
    if scenario == "st":
        return "none"
    return f"{'CLAE ' if method == 'clae' else ''}PGD-{STEPS} L-inf eps 8/255 step {ALPHA:.4g}"


@pytest.mark.parametrize("scheme,scenario,method", _fast_few(COMBOS))
def test_every_combination_trains_and_reloads(tmp_path, monkeypatch, scheme, scenario, method):
    cfg = TrainConfig(scheme=scheme, scenario=scenario, adv_method=method, eps=EPS, seed=3, **TINY)
    trainer, spy, meta = _run(monkeypatch, cfg, tmp_path / "m")
    losses = [h["loss"] for h in trainer.history if h["phase"] != "linear-probe"]
    assert losses and all(torch.isfinite(torch.tensor(losses)))
    assert 0 <= meta["metrics"]["pgd20_8_255_accuracy"] <= 1
    phases = _phases(scheme, scenario)
    assert [(h["phase"], h["epoch"]) for h in trainer.history] == [(p, 1) for p in phases]

    # The attack runs once per batch in every adversarial phase, never in standard training.
    batches = TINY["n_train"] // TINY["batch_size"]
    attacked = [p for p in phases if p != "linear-probe" and scenario != "st"]
    assert [c.phase for c in spy.calls] == [p for p in attacked for _ in range(batches)]

    # Which parameters each phase trains (BN running statistics are buffers, checked with them).
    params = [k for k, _ in trainer.net.named_parameters()]
    enc = [k for k in params if k.startswith("encoder.")]
    proj = [k for k in params if k.startswith("projector.")]
    head = [k for k in params if k.startswith("classifier.")]
    not_head = [k for k in spy.before["pretrain"] if not k.startswith("classifier.")]
    trained = spy.changed("pretrain", params)
    assert enc and set(enc) <= trained
    if scheme == "supervised":
        assert not proj and set(head) <= trained
    else:
        assert proj and set(proj) <= trained and not trained & set(head)
        assert set(head) <= spy.changed("linear-probe", head) and not spy.changed("linear-probe", not_head)
        assert spy.probe_acc == pytest.approx(trainer.history[1]["train_acc"])
        chance = torch.bincount(trainer.train_data.labels).max().item() / TINY["n_train"]
        assert spy.probe_acc > max(chance, 0.5)
    adv = [k for k in params if ".adv." in k]
    assert bool(adv) == (method == "clae")
    assert set(adv) <= trained  # CLAE trains the adversarial BN branch
    if scenario == "pat":  # only the classifier; encoder weights and BN statistics untouched
        assert set(head) <= spy.changed("pat", head) and not spy.changed("pat", not_head)
    if scenario == "fat":
        assert set(enc) | set(head) <= spy.changed("fat", params)

    net, saved = load_network(tmp_path / "m.safetensors")
    training = saved["training"]
    assert training["scheme"] == scheme and training["scenario"] == scenario and training["adv_method"] == method
    assert training["eps"] == EPS and training["eps_text"] == "8/255" and training["attack_steps"] == STEPS
    assert training["train_attack"] == _attack_text(scenario, method)
    assert "torch" in saved["versions"] and training["seed"] == 3
    x = torch.rand(4, 3, 32, 32)
    trainer.net.eval()
    with torch.no_grad():
        assert torch.allclose(net(x), trainer.net(x), atol=1e-6)
    assert not (tmp_path / "m.state.pt").exists()


@pytest.mark.parametrize("scheme,scenario,method", _fast_few(ADVERSARIAL))
def test_adversarial_training_attacks_and_the_attack_matters(tmp_path, monkeypatch, scheme, scenario, method):
    cfg = dict(scheme=scheme, scenario=scenario, adv_method=method, eps=EPS, seed=4, **ONE_BATCH)
    attacked = ["pretrain"] + ([scenario] if scenario in ("pat", "fat") else [])
    real, spy, _ = _run(monkeypatch, TrainConfig(**cfg), tmp_path / "real", stop_after=attacked[-1])
    assert [c.phase for c in spy.calls] == attacked  # one batch per epoch
    for c in spy.calls:
        assert (c.eps, c.steps) == (EPS, STEPS) and c.alpha == pytest.approx(ALPHA), c.phase
        assert (c.out - c.x).abs().max() <= EPS + 1e-6, c.phase
        assert c.out.min() >= 0 and c.out.max() <= 1, c.phase
        assert not torch.equal(c.out, c.x), c.phase
    loss = {h["phase"]: h["loss"] for h in real.history}

    # Same seed, attack replaced by the identity in one phase: earlier phases are unchanged,
    # that phase's first batch (epoch 1 = one batch, before any update) has a lower loss.
    for phase in attacked:
        clean, _, _ = _run(monkeypatch, TrainConfig(**cfg), tmp_path / phase, identity_in={phase}, stop_after=phase)
        clean_loss = {h["phase"]: h["loss"] for h in clean.history}
        for earlier in attacked[:attacked.index(phase)]:
            assert clean_loss[earlier] == loss[earlier]
        assert clean_loss[phase] < loss[phase], phase


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["wrn-10-1", "preact-resnet18"])
def test_preactivation_architectures_train_and_reload(tmp_path, arch, one_thread):
    cfg = TrainConfig(scheme="simclr", scenario="at", arch=arch, seed=1, **TINY)
    trainer = Trainer(cfg, tmp_path / "m", progress=False)
    trainer.run()
    net, saved = load_network(tmp_path / "m.safetensors")
    assert net.config.arch == arch and saved["training"]["arch"] == arch
    x = torch.rand(2, 3, 32, 32)
    trainer.net.eval()
    with torch.no_grad():
        assert torch.allclose(net(x), trainer.net(x), atol=1e-6)


def test_adversarial_scenarios_need_an_eps_above_zero():
    for scenario in ("at", "pat", "fat"):
        with pytest.raises(ClrobustError, match=f"--eps 0 with scenario '{scenario}' would train without any attack"):
            TrainConfig(scheme="simclr", scenario=scenario, eps=0.0)
    assert TrainConfig(scheme="simclr", scenario="st", eps=0.0).eps == 0.0  # ST ignores eps


def test_nonsense_combinations_are_refused():
    with pytest.raises(ClrobustError, match="does not apply to 'supervised'"):
        TrainConfig(scheme="supervised", scenario="pat")
    with pytest.raises(ClrobustError, match="clae"):
        TrainConfig(scheme="supervised", scenario="at", adv_method="clae")
    with pytest.raises(ClrobustError, match="clae"):
        TrainConfig(scheme="simclr", scenario="st", adv_method="clae")
    with pytest.raises(ClrobustError, match="--augment"):
        TrainConfig(scheme="supcon", augment="jitter")


@pytest.mark.slow
def test_augment_defaults_and_choice_are_used_and_recorded(tmp_path):
    assert TrainConfig(scheme="supcon").augment == "simclr"
    assert TrainConfig(scheme="supervised").augment == "crop-flip"
    cfg = dict(scheme="supcon", scenario="st", seed=5, **TINY)
    Trainer(TrainConfig(**cfg), tmp_path / "a", progress=False).run()
    Trainer(TrainConfig(**cfg, augment="crop-flip"), tmp_path / "b", progress=False).run()
    assert _curve(tmp_path / "a.history.csv") != _curve(tmp_path / "b.history.csv")
    _, saved = load_network(tmp_path / "b.safetensors")
    assert saved["training"]["augment"] == "crop-flip"


def _curve(path):
    with open(path) as fh:
        return [row["loss"] for row in csv.DictReader(fh)]


@pytest.mark.slow
def test_same_seed_same_loss_curve(tmp_path):
    cfg = dict(scheme="simclr", scenario="at", seed=7, **{**TINY, "epochs": 2})
    Trainer(TrainConfig(**cfg), tmp_path / "a", progress=False).run()
    Trainer(TrainConfig(**cfg), tmp_path / "b", progress=False).run()
    assert _curve(tmp_path / "a.history.csv") == _curve(tmp_path / "b.history.csv")
    Trainer(TrainConfig(**{**cfg, "seed": 8}), tmp_path / "c", progress=False).run()
    assert _curve(tmp_path / "a.history.csv") != _curve(tmp_path / "c.history.csv")


def test_interrupted_run_resumes_to_the_same_result(tmp_path):
    cfg = dict(scheme="supervised", scenario="st", seed=1, **{**TINY, "epochs": 3})
    Trainer(TrainConfig(**cfg), tmp_path / "full", progress=False).run()

    class Stop(Exception):
        pass

    t = Trainer(TrainConfig(**cfg), tmp_path / "cut", progress=False)
    orig = t._supervised_step
    calls = {"n": 0}

    def step(*a):
        calls["n"] += 1
        if calls["n"] == 4:  # during epoch 2 (2 batches per epoch)
            raise Stop
        return orig(*a)

    t._supervised_step = step
    with pytest.raises(Stop):
        t.run()
    assert (tmp_path / "cut.state.pt").exists()
    saved = (tmp_path / "cut.state.pt").read_bytes()
    with pytest.raises(ClrobustError, match=r"cut.state.pt': it was saved by a run with other settings .*; "
                                            r"delete it to start from scratch, or run without --resume\.$"):
        Trainer(TrainConfig(**{**cfg, "lr": 0.5}), tmp_path / "cut", progress=False).run(resume=True)
    assert (tmp_path / "cut.state.pt").read_bytes() == saved  # refused, untouched
    lines: List[str] = []
    meta = Trainer(TrainConfig(**cfg), tmp_path / "cut", progress=False, log=lines.append).run(resume=True)
    assert _curve(tmp_path / "cut.history.csv") == _curve(tmp_path / "full.history.csv")
    # The training cost sums every run's epochs: the first run's one epoch and the resumed run's two.
    with open(tmp_path / "cut.history.csv") as fh:
        rows = [r for r in csv.DictReader(fh) if r["phase"] == "pretrain"]
    assert [r["device"] for r in rows] == ["cpu"] * 3 and all(float(r["seconds"]) > 0 for r in rows)
    assert {r["precision"] for r in rows} == {"fp32"}
    training = meta["training"]
    assert training["train_seconds"] == pytest.approx(sum(float(r["seconds"]) for r in rows), abs=0.051)
    assert (training["optimizer_steps"], training["train_images"], training["train_devices"]) == (6, 96, ["cpu x1"])
    assert training["train_precisions"] == ["fp32"]
    assert "untimed_epochs" not in training
    # With the bars off, the log says how each epoch went.
    assert lines[0] == "resuming pretrain after epoch 1"
    assert [ln.split(":")[0] for ln in lines[1:]] == ["pretrain epoch 2/3", "pretrain epoch 3/3"]
    assert "images/s)" in lines[-1] and "loss " in lines[-1]
    a, _ = load_network(tmp_path / "full.safetensors")
    b, _ = load_network(tmp_path / "cut.safetensors")
    for (k, va), vb in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(va, vb), k


def test_clae_perturbation_raises_batch_loss_and_respects_eps(tmp_path):
    cfg = TrainConfig(scheme="simclr", scenario="at", adv_method="clae", seed=0, **{**TINY, "attack_steps": 1})
    t = Trainer(cfg, tmp_path / "c", progress=False)
    from clrobust.data import load_dataset, to_float

    t.train_data = load_dataset("cifar10-mini", "train").subset(32)
    t.net = t._build()
    t.net.train()
    x = to_float(t.train_data.images[:16])
    from clrobust.attacks import pgd_maximize
    from clrobust.train.trainer import frozen_bn_stats

    net = t.net
    with frozen_bn_stats(net):
        z1 = net.project(x).detach()
        with adversarial_bn(net):
            loss = lambda xa: nt_xent(z1, net.project(xa), cfg.temperature)  # noqa: E731
            v2 = x.flip(3)
            adv = pgd_maximize(loss, v2, cfg.eps, cfg.attack_alpha, 1, random_start=False)
            assert loss(adv) > loss(v2)
    assert (adv - v2).abs().max() <= cfg.eps + 1e-6
    assert cfg.attack_alpha == pytest.approx(cfg.eps)  # one FGSM step of size eps
    # The checkpoint keeps both BNs; the default load uses the clean one.
    assert any(".adv." in k for k in net.state_dict())


def test_the_training_device_is_recorded_and_a_run_resumes_on_any_device(tmp_path):
    """--device is part of the recorded settings but not of what a resumed run must share."""
    a = Trainer(TrainConfig(device="cuda"), tmp_path / "m", progress=False)
    b = Trainer(TrainConfig(device="cpu"), tmp_path / "m", progress=False)
    assert a._settings_key() == b._settings_key()
    assert Trainer(TrainConfig(device="cpu", seed=1), tmp_path / "m")._settings_key() != b._settings_key()
    cfg = dict(scheme="supervised", scenario="st", seed=1, **{**TINY, "epochs": 1})
    meta = Trainer(TrainConfig(**cfg, device="cpu"), tmp_path / "run", progress=False).run()
    assert meta["training"]["device"] == "cpu"


def _history(path: Path) -> List[float]:
    with open(path.with_name(path.name + ".history.csv")) as fh:
        return [float(r["loss"]) for r in csv.DictReader(fh) if r["loss"] != "nan"]


@pytest.mark.slow
@pytest.mark.parametrize("scheme,scenario", [("supervised", "st"), ("simclr", "at")])
def test_two_and_three_processes_train_as_one(tmp_path, scheme, scenario):
    """torchrun (gloo) with 2 and 3 processes against one process, two epochs of one batch of 12: the first
    epoch's loss is the whole batch's before any update (batch norm over every share, contrastive losses over
    every share's embeddings, the PGD start of the whole batch); the second follows one averaged-gradient
    update. Standard training is continuous, so its weights agree too; sign-PGD is not (a float-rounding
    difference can flip a pixel's step, and in a contrastive loss every image's gradient then moves: measured,
    with the old recipe none of 36,864 pixels differed after 3 steps, 1 after 4, 609 after 5; with the paper's,
    1 after 2), so the attack takes 1 step and adversarial training's second epoch is only checked loosely."""
    import subprocess
    import sys

    from safetensors.torch import load_file

    from tests.conftest import torchrun

    args = ["train", "--scheme", scheme, "--scenario", scenario, "--width", "4", "--n-train", "12",
            "--batch-size", "12", "--epochs", "2", "--classifier-epochs", "1", "--eval-samples", "12",
            "--attack-steps", "1", "--device", "cpu", "--no-progress"]
    p = subprocess.run([sys.executable, "-m", "clrobust", *args, "--out", str(tmp_path / "one")],
                       capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    one = load_file(tmp_path / "one.safetensors")
    for processes in (2, 3):
        out = tmp_path / f"n{processes}"
        code, text = torchrun([*args, "--out", str(out)], processes=processes)
        assert code == 0, text
        assert text.count("saved ") == 1  # only rank 0 speaks and writes
        first, second = _history(tmp_path / "one"), _history(out)
        assert len(first) == len(second) == 2
        assert first[0] == pytest.approx(second[0], rel=1e-6, abs=0)
        assert first[1] == pytest.approx(second[1], rel=1e-5 if scenario == "st" else 1e-2, abs=0)
        many = load_file(out.with_name(out.name + ".safetensors"))
        assert many.keys() == one.keys()
        if scenario == "st":
            for k, v in one.items():
                if v.is_floating_point() and "running_var" not in k:
                    torch.testing.assert_close(many[k], v, rtol=0, atol=1e-4 * max(1.0, float(v.abs().max())))


def test_a_batch_that_does_not_split_evenly_is_refused(tmp_path, monkeypatch):
    from clrobust.distributed import Dist

    trainer = Trainer(TrainConfig(**TINY), tmp_path / "m", progress=False, dist=Dist(rank=0, world=3))
    with pytest.raises(ClrobustError, match="multiple of 3"):
        trainer.run()


@pytest.mark.slow
def test_amp_follows_the_device_and_is_recorded(tmp_path):
    assert TrainConfig(device="cuda").amp is True and TrainConfig(device="cpu").amp is False
    assert TrainConfig(device="cpu", amp=True).amp is True
    meta = Trainer(TrainConfig(**ONE_BATCH, amp=True), tmp_path / "bf16", progress=False).run()
    assert meta["training"]["amp"] is True  # bf16 autocast runs on the CPU too
    plain = Trainer(TrainConfig(**ONE_BATCH), tmp_path / "fp32", progress=False).run()
    assert plain["training"]["amp"] is False
    with open(tmp_path / "bf16.history.csv") as fh:
        assert next(csv.DictReader(fh))["precision"] == "bf16"
    bf16, fp32 = _history(tmp_path / "bf16")[0], _history(tmp_path / "fp32")[0]
    assert bf16 != fp32 and bf16 == pytest.approx(fp32, rel=0.05)  # autocast really ran, at bf16 precision


@pytest.mark.parametrize("has_bf16", [False, True])
def test_amp_on_a_cpu_without_bf16_instructions_warns(tmp_path, monkeypatch, has_bf16):
    """Emulated bf16 autocast runs about 30x slower than fp32: --amp there gets a warning naming --no-amp."""
    import warnings

    assert isinstance(trainer_module._cpu_has_bf16(), bool)
    monkeypatch.setattr(trainer_module, "_cpu_has_bf16", lambda: has_bf16)
    trainer = Trainer(TrainConfig(**ONE_BATCH, amp=True), tmp_path / "m", progress=False)
    monkeypatch.setattr(trainer, "_phase", lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt))
    with warnings.catch_warnings(record=True) as caught, pytest.raises(KeyboardInterrupt):
        warnings.simplefilter("always")
        trainer.run()
    said = [str(w.message) for w in caught if "bf16" in str(w.message)]
    assert (said == []) if has_bf16 else (len(said) == 1 and "--no-amp" in said[0]), said


def test_the_paper_recipe_perturbs_the_plain_image_and_the_old_one_a_view(tmp_path, monkeypatch):
    """Contrastive AT: --adv-view plain attacks the un-augmented batch (every attacked row is a training image's
    exact pixels); view attacks augmented views (rows that are no training image)."""
    from clrobust.data import to_float

    for view, exact in (("plain", True), ("view", False)):
        cfg = TrainConfig(scheme="simclr", scenario="at", seed=2, adv_view=view, **ONE_BATCH)
        trainer, spy, _ = _run(monkeypatch, cfg, tmp_path / view, stop_after="pretrain")
        images = to_float(trainer.train_data.images).flatten(1)
        rows = spy.calls[0].x.flatten(1)
        hits = [bool(((images - r).abs().amax(1) == 0).any()) for r in rows]
        assert all(hits) if exact else not any(hits), view


def test_the_acl_pair_perturbs_both_views_and_contrasts_them_through_the_adversarial_batch_norm(tmp_path,
                                                                                                 monkeypatch):
    """--adv-view pair (ACL's dual stream): one attack on both augmented views together (2n rows, none a
    training image's exact pixels) that raises the loss between them, and the first batch's loss is the clean
    pair's NT-Xent plus the adversarial pair's, the latter through the adversarial batch norm (recomputed here
    from the recorded views and the network before the update)."""
    from clrobust.data import to_float
    from clrobust.models import DualBatchNorm2d

    build = Trainer._build

    def distinct_adversarial_bn(self: Trainer) -> Any:  # the two batch norms start equal: tell them apart
        net = build(self)
        g = torch.Generator().manual_seed(0)
        for m in net.modules():
            if isinstance(m, DualBatchNorm2d):
                m.adv.weight.data.uniform_(0.5, 1.5, generator=g)
        return net

    monkeypatch.setattr(Trainer, "_build", distinct_adversarial_bn)
    cfg = TrainConfig(scheme="simclr", scenario="at", seed=3, adv_view="pair", dual_bn=True, **ONE_BATCH)
    trainer, spy, _ = _run(monkeypatch, cfg, tmp_path / "pair", stop_after="pretrain")
    n = ONE_BATCH["batch_size"]
    (call,) = [c for c in spy.calls if c.phase == "pretrain"]
    assert call.x.shape[0] == 2 * n and call.steps == STEPS
    assert (call.x[:n] - call.x[n:]).flatten(1).abs().amax(1).min() > 0  # two views of each image, not one twice
    images = to_float(trainer.train_data.images).flatten(1)
    assert not any(bool(((images - r).abs().amax(1) == 0).any()) for r in call.x.flatten(1))
    assert (call.out - call.x).abs().max() <= EPS + 1e-6

    net = trainer._build()
    net.load_state_dict(spy.before["pretrain"])
    net.train()
    t = cfg.temperature
    with torch.no_grad():
        z = net.project(call.x)
        with adversarial_bn(net):
            za, z0 = net.project(call.out), net.project(call.x)
        with adversarial_bn(net, False):
            za_clean_bn = net.project(call.out)
    assert nt_xent(za[:n], za[n:], t) > nt_xent(z0[:n], z0[n:], t)  # the attack raised the pair's loss
    expected = nt_xent(z[:n], z[n:], t) + nt_xent(za[:n], za[n:], t)
    assert trainer.history[0]["loss"] == pytest.approx(expected.item(), rel=1e-5)
    wrong_bn = nt_xent(z[:n], z[n:], t) + nt_xent(za_clean_bn[:n], za_clean_bn[n:], t)
    assert abs(wrong_bn.item() - expected.item()) > 1e-3  # the batch norm the check tells apart


def test_dual_bn_training_reads_robustness_through_the_adversarial_batch_norm(tmp_path):
    from clrobust.checkpoints import load

    cfg = TrainConfig(scheme="simclr", scenario="at", seed=1, dual_bn=True, **ONE_BATCH)
    trainer = Trainer(cfg, tmp_path / "acl", progress=False)
    meta = trainer.run()
    assert meta["robust_bn"] == "adversarial"
    bn = trainer.net.encoder.stem.bn
    assert bn.route_adversarial and not torch.equal(bn.adv.running_mean, torch.zeros_like(bn.adv.running_mean))
    assert load(str(tmp_path / "acl.safetensors")).batch_norm == "adversarial"
    with pytest.raises(ClrobustError, match="--adv-view view"):
        TrainConfig(scheme="simclr", scenario="at", dual_bn=True, adv_view="view")


def test_supervised_adversarial_training_adds_the_clean_term(tmp_path):
    """clean+adv against adv only, same seed: the first batch's examples are the same, so the losses differ by
    the clean cross-entropy of an untrained network (about ln 10)."""
    losses = {}
    for objective in ("clean+adv", "adv"):
        cfg = TrainConfig(scheme="supervised", scenario="at", seed=4, adv_objective=objective, **ONE_BATCH)
        Trainer(cfg, tmp_path / objective.replace("+", "-"), progress=False).run()
        losses[objective] = _history(tmp_path / objective.replace("+", "-"))[0]
    assert 1.0 < losses["clean+adv"] - losses["adv"] < 4.0


def test_the_paper_preset_and_its_short_step(tmp_path):
    paper = TrainConfig(scheme="supcon", scenario="at", preset="paper", eps=16 / 255)
    assert (paper.temperature, paper.proj_dim, paper.attack_alpha, paper.lr) == (0.07, 100, 0.01, 3e-4)
    assert TrainConfig(scheme="supcon", preset="paper", temperature=0.2).temperature == 0.2  # explicit wins
    assert TrainConfig(scheme="simclr").proj_dim == 128 and TrainConfig(scheme="simclr").temperature == 0.5
    text = Trainer(paper, tmp_path / "m").train_attack_text()
    assert text.endswith("(its steps move a pixel 12.75/255 at most)")  # 5 x 0.01, short of 16/255
    with pytest.raises(ClrobustError, match="--preset"):
        TrainConfig(preset="fast")


def _image_folder(root, seed=0):
    import numpy as np
    from PIL import Image

    from clrobust.data import CIFAR10_CLASSES

    rng = np.random.default_rng(seed)
    for c in CIFAR10_CLASSES:
        (root / "train" / c).mkdir(parents=True)
        for i in range(2):
            Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(root / "train" / c / f"{i}.png")


def test_a_state_resumes_from_its_images_in_another_folder_and_refuses_other_images(tmp_path):
    """A state records what its training images are, not where they lay: moved to another folder (another
    machine) they resume to the uninterrupted run's curve; one changed pixel is refused, the state untouched;
    a state saved before the digest was kept (its settings name the folder) still resumes elsewhere."""
    import json
    import shutil

    from PIL import Image

    _image_folder(tmp_path / "a")
    cfg = dict(scheme="supervised", scenario="st", seed=1, data="imagefolder",
               **{**TINY, "n_train": None, "batch_size": 10, "epochs": 3})
    Trainer(TrainConfig(**cfg, data_root=str(tmp_path / "a")), tmp_path / "full", progress=False).run()

    class Stop(Exception):
        pass

    def cut(out):  # stopped in epoch 2 (2 batches an epoch): epoch 1's state stays
        t = Trainer(TrainConfig(**cfg, data_root=str(tmp_path / "a")), out, progress=False)
        orig, calls = t._supervised_step, {"n": 0}

        def step(*a):
            calls["n"] += 1
            if calls["n"] == 3:
                raise Stop
            return orig(*a)

        t._supervised_step = step
        with pytest.raises(Stop):
            t.run()
        return out.with_name(out.name + ".state.pt")

    shutil.copytree(tmp_path / "a", tmp_path / "b")
    state = cut(tmp_path / "cut")
    saved = state.read_bytes()
    shutil.copytree(tmp_path / "a", tmp_path / "c")
    img = tmp_path / "c" / "train" / "cat" / "1.png"
    px = Image.open(img).convert("RGB")
    px.putpixel((0, 0), tuple((v + 1) % 256 for v in px.getpixel((0, 0))))
    px.save(img)
    with pytest.raises(ClrobustError, match=r"cut.state.pt': it was trained on other images \(20 images 3x32x32, "
                                            r"sha256 [0-9a-f]{16}; these are 20 images 3x32x32, sha256 "):
        Trainer(TrainConfig(**cfg, data_root=str(tmp_path / "c")), tmp_path / "cut", progress=False).run(resume=True)
    assert state.read_bytes() == saved
    Trainer(TrainConfig(**cfg, data_root=str(tmp_path / "b")), tmp_path / "cut", progress=False).run(resume=True)
    assert _curve(tmp_path / "cut.history.csv") == _curve(tmp_path / "full.history.csv")

    old = cut(tmp_path / "old")  # as saved before the digest: no digest, the folder in the settings
    s = torch.load(old, weights_only=True)
    del s["data"]
    s["settings"] = json.dumps({**json.loads(s["settings"]), "data_root": str(tmp_path / "a"),
                                "eval_data_root": None}, sort_keys=True)
    torch.save(s, old)
    Trainer(TrainConfig(**cfg, data_root=str(tmp_path / "b")), tmp_path / "old", progress=False).run(resume=True)
    assert _curve(tmp_path / "old.history.csv") == _curve(tmp_path / "full.history.csv")


def test_evaluation_on_another_data_set_and_the_papers_attacks(tmp_path):
    """Train on an image folder (a stand-in for the JPEG CIFAR-10 copy), evaluate on the embedded exact test
    images; the metrics name them and carry the paper's PGD-40 at 4/255 for both threat models."""
    import numpy as np
    from PIL import Image

    from clrobust.data import CIFAR10_CLASSES

    rng = np.random.default_rng(0)
    for c in CIFAR10_CLASSES:
        (tmp_path / "jpeg" / "train" / c).mkdir(parents=True)
        for i in range(2):
            Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(
                tmp_path / "jpeg" / "train" / c / f"{i:04d}.jpg", quality=75)
    cfg = TrainConfig(scheme="supervised", scenario="st", data="imagefolder", data_root=str(tmp_path / "jpeg"),
                      eval_data="cifar10-mini", **{**ONE_BATCH, "n_train": None, "batch_size": 20,
                                                   "eval_samples": 8})
    m = Trainer(cfg, tmp_path / "m", progress=False).run()["metrics"]
    assert m["eval_data"] == "cifar10-mini" and m["eval_samples"] == 8
    assert m["eval_attacks"]["paper_threat_model_II"]["steps"] == 40
    assert m["eval_attacks"]["paper_threat_model_I"]["eps_text"] == "4/255"
    for key in ("paper_tm2_pgd40_4_255_accuracy", "paper_tm1_pgd40_4_255_accuracy"):
        assert 0 <= m[key] <= m["clean_accuracy"]


def test_n_train_of_an_image_folder_draws_every_class_and_says_so(tmp_path):
    """An image folder lists its images class by class: ``--n-train 10`` of 10 classes x 2 images trains on
    one image of each class (its first 10 would be five classes), and its own test split's evaluation images
    likewise; the checkpoint records how both were chosen."""
    import numpy as np
    from PIL import Image

    from clrobust.data import CIFAR10_CLASSES

    rng = np.random.default_rng(1)
    for split in ("train", "test"):
        for c in CIFAR10_CLASSES:
            (tmp_path / "imgs" / split / c).mkdir(parents=True)
            for i in range(2):
                Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(
                    tmp_path / "imgs" / split / c / f"{i}.png")
    cfg = TrainConfig(scheme="supervised", scenario="st", data="imagefolder", data_root=str(tmp_path / "imgs"),
                      **{**ONE_BATCH, "n_train": 10, "batch_size": 10, "eval_samples": 10})
    t = Trainer(cfg, tmp_path / "m", progress=False)
    meta = t.run()
    assert sorted(t.train_data.labels.tolist()) == list(range(10))
    assert sorted(t.test_data.labels.tolist()) == list(range(10))
    assert meta["training"]["train_images_chosen"].startswith("10 of the 20 in the split, class-stratified")
    assert meta["metrics"]["eval_images"].startswith("10 of the 20 in the split, class-stratified")
    assert meta["metrics"]["eval_images"].endswith("(imagefolder test split)")


@pytest.mark.skipif(not hasattr(signal, "SIGSTOP"), reason="POSIX job control")
def test_the_work_clock_leaves_out_the_time_the_process_was_stopped():
    """A background job paused with SIGSTOP for 2 s and continued: the clock an epoch's seconds are read
    from leaves the pause out (the wall clock counts it as training cost); a SIGCONT without a stop changes
    nothing."""
    code = ("import time\nfrom clrobust.train.clock import work_seconds\n"
            "w0, t0 = work_seconds(), time.monotonic()\nprint('ready', flush=True)\n"
            "while time.monotonic() - t0 < 4.0:\n    sum(range(1000))\n"
            "print(work_seconds() - w0, time.monotonic() - t0, flush=True)\n")
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "ready"
        time.sleep(0.4)
        child.send_signal(signal.SIGCONT)  # not stopped: nothing to leave out
        time.sleep(0.4)
        stopped = time.monotonic()
        child.send_signal(signal.SIGSTOP)
        time.sleep(2.0)
        child.send_signal(signal.SIGCONT)
        stopped = time.monotonic() - stopped  # about 2 s; more on a loaded machine
        work, wall = (float(v) for v in child.communicate(timeout=60)[0].split())
    finally:
        child.kill()
    assert wall >= 4.0 and abs((wall - work) - stopped) <= 0.6, (work, wall, stopped)


def test_an_epochs_seconds_come_from_the_work_clock(tmp_path, monkeypatch):
    ticks = iter(range(0, 10_000, 7))
    monkeypatch.setattr(trainer_module, "work_seconds", lambda: float(next(ticks)))
    Trainer(TrainConfig(scheme="supervised", scenario="st", **ONE_BATCH), tmp_path / "m", progress=False).run()
    with open(tmp_path / "m.history.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert [float(r["seconds"]) for r in rows if r["phase"] == "pretrain"] == [7.0]


def test_epochs_from_a_state_saved_before_timings_were_recorded_are_counted_as_untimed(tmp_path):
    t = Trainer(TrainConfig(scheme="supervised", scenario="st", **TINY), tmp_path / "m", progress=False)
    t.train_data = load_dataset("cifar10-mini", "train").subset(32)
    t.history = [{"phase": "pretrain", "epoch": 1, "loss": 2.0, "lr": 0.1},
                 {"phase": "pretrain", "epoch": 2, "loss": 1.9, "lr": 0.1, "seconds": 3.5, "device": "cuda",
                  "processes": 2},
                 {"phase": "linear-probe", "epoch": 1, "loss": float("nan"), "train_acc": 0.5}]
    assert t.training_cost() == {"train_seconds": 3.5, "optimizer_steps": 4, "train_images": 64,
                                 "train_devices": ["cuda x2"], "untimed_epochs": 1}
    # A run resumed on the CPU in fp32 after bf16 epochs on a GPU lists both devices and both precisions.
    t.history[1]["precision"] = "bf16"
    t.history.insert(2, {"phase": "pretrain", "epoch": 3, "loss": 1.8, "lr": 0.1, "seconds": 9.0, "device": "cpu",
                         "processes": 1, "precision": "fp32"})
    assert t.training_cost() == {"train_seconds": 12.5, "optimizer_steps": 6, "train_images": 96,
                                 "train_devices": ["cpu x1", "cuda x2"], "train_precisions": ["bf16", "fp32"],
                                 "untimed_epochs": 1}


def test_a_state_saved_before_a_setting_existed_still_resumes(tmp_path):
    """A settings key without a setting a later clrobust added resumes when that setting keeps its default, and
    is refused when it does not (or when a shared setting differs)."""
    import json

    t = Trainer(TrainConfig(scheme="simclr", scenario="at"), tmp_path / "m")
    now = json.loads(t._settings_key())
    older = json.dumps({k: v for k, v in now.items() if k != "dual_bn"}, sort_keys=True)
    assert t._same_settings(t._settings_key()) and t._same_settings(older)
    assert not Trainer(TrainConfig(scheme="simclr", scenario="at", dual_bn=True), tmp_path / "m")._same_settings(older)
    assert not t._same_settings(json.dumps({**now, "lr": 0.5}))
    assert not t._same_settings(json.dumps({**now, "gone": 1}))  # a setting this clrobust does not know
    assert not t._same_settings("not json") and not t._same_settings(None)


def _weights(path: Path) -> State:
    net, _ = load_network(path)
    return net.state_dict()


@pytest.mark.parametrize("scheme,scenario,dual_bn", _fast_few(
    [("supervised", "at", False), ("simclr", "st", False), ("simclr", "at", True)], fast={("simclr", "at", True)}))
def test_watching_during_training_leaves_it_unchanged_and_ends_at_the_final_numbers(tmp_path, scheme, scenario,
                                                                                    dual_bn):
    """--eval-every measures clean and robust accuracy on the final evaluation's images and attack after every
    N-th and the last epoch, without touching the training (weights, losses, classifier, the batch norm the
    training reads are those of a run without it); for a supervised net its last measurement is the final
    evaluation."""
    cfg = dict(scheme=scheme, scenario=scenario, seed=3, dual_bn=dual_bn,
               **{**TINY, "epochs": 3, "eval_samples": 16})
    plain = Trainer(TrainConfig(**cfg), tmp_path / "plain", progress=False).run()
    lines: List[str] = []
    meta = Trainer(TrainConfig(**cfg, eval_every=2), tmp_path / "watched", progress=False, log=lines.append).run()
    assert _curve(tmp_path / "watched.history.csv") == _curve(tmp_path / "plain.history.csv")
    a, b = _weights(tmp_path / "plain.safetensors"), _weights(tmp_path / "watched.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), "watching changed the training"
    assert meta["metrics"]["clean_accuracy"] == plain["metrics"]["clean_accuracy"]
    with open(tmp_path / "watched.history.csv") as fh:
        rows = list(csv.DictReader(fh))
    watched = [(r["phase"], int(r["epoch"])) for r in rows if r["eval_clean"]]
    assert watched[:2] == [("pretrain", 2), ("pretrain", 3)]  # every 2nd epoch, and the last
    assert [ln for ln in lines if "eval clean" in ln][0].startswith("pretrain epoch 2/3: loss ")
    during = meta["metrics"]["during_training"]
    assert [(e["phase"], e["epoch"]) for e in during["epochs"]] == watched
    assert during["attack"] == meta["metrics"]["eval_attacks"]["threat_model_II"]
    last = during["epochs"][1]
    for e in during["epochs"]:
        assert 0 <= e["robust"] <= e["clean"] <= 1 and e["clean"] * 16 == round(e["clean"] * 16)
    if scheme == "supervised":  # nothing trains after the last pre-training epoch: the final numbers
        assert (last["clean"], last["robust"]) == (meta["metrics"]["clean_accuracy"],
                                                   meta["metrics"]["pgd20_8_255_accuracy"])
    else:  # a contrastive encoder is read through a probe fitted on a copy: no extra linear-probe row
        assert [r["phase"] for r in rows].count("linear-probe") == 1


def test_a_run_resumes_with_another_eval_every_and_a_negative_one_is_refused(tmp_path):
    t = Trainer(TrainConfig(scheme="supervised", scenario="at"), tmp_path / "m")
    assert Trainer(TrainConfig(scheme="supervised", scenario="at", eval_every=3), tmp_path / "m")._same_settings(
        t._settings_key())
    with pytest.raises(ClrobustError, match=r"--eval-every -1 is negative"):
        TrainConfig(eval_every=-1)


def test_the_watch_probe_sees_every_class_of_a_class_ordered_training_set(tmp_path, monkeypatch):
    """An image folder lists its images class by class: the probe that reads a contrastive encoder during
    training is fitted on a class-stratified sample, not on the first images (which would be one class)."""
    from clrobust.data import ImageData

    real_chosen = trainer_module.chosen_images
    sizes: List[int] = []

    def class_ordered(cfg: Any, split: str, *args: Any, **kw: Any) -> ImageData:
        d = real_chosen(cfg, split, *args, **kw)
        if split != "train":
            return d
        order = torch.argsort(d.labels, stable=True)
        sizes.append(len(d))
        return ImageData(d.name, d.split, d.images[order], d.labels[order], d.classes, "sorted by class")

    monkeypatch.setattr(trainer_module, "chosen_images", class_ordered)
    monkeypatch.setattr(trainer_module, "WATCH_PROBE_IMAGES", TINY["n_train"] // 4)
    trainer = Trainer(TrainConfig(scheme="simclr", scenario="st", seed=3, eval_every=1, **{**TINY, "epochs": 1}),
                      tmp_path / "m", progress=False)
    seen: List[Set[int]] = []
    real = Trainer._fit_probe_into

    def spy(self: Trainer, net: Any, data: Any) -> float:
        seen.append(set(data.labels.tolist()))
        return real(self, net, data)

    monkeypatch.setattr(Trainer, "_fit_probe_into", spy)
    trainer.run()
    # 8 of 32 images: the first 8 of the class-ordered set hold 2 or 3 classes, a stratified 8 nearly all
    classes = set(load_dataset("cifar10-mini", "train").labels[:TINY["n_train"]].tolist())
    assert sizes == [TINY["n_train"]] and seen and seen[0] <= classes and len(seen[0]) >= 6
