"""Training under every scenario of the science: scheme x scenario x adversarial method.

Two phases:

1. *pre-training* the encoder: SimCLR / SupCon (with the projection head) or
   supervised cross-entropy (with the classifier), standard or adversarial
   (PGD on the training loss, or CLAE's batch-wise adversarial examples);
2. *the classifier phase*: a linear classifier on the frozen encoder, standard
   (``st``, ``at``) or adversarial (``pat``), or adversarial fine-tuning of
   encoder and classifier together (``fat``).

State is saved after every epoch, so an interrupted run resumes where it stopped.

Under ``torchrun`` every process takes an equal share of each batch (the views, random
starts and order are drawn for the whole batch, from the same seed, on every process),
batch norm takes its statistics over all shares, contrastive losses see every share's
embeddings, and the gradients are averaged: N processes train as one process with the
whole batch would, up to the order of floating-point sums. With ``amp`` (the default on
CUDA; opt-in on the CPU, where a CPU with bf16 instructions trains 2.1x faster) the forward
passes run under bf16 autocast with channels-last memory.
"""

from __future__ import annotations

import contextlib
import copy
import csv
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, cast

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from clrobust.activations import batch_plan
from clrobust.attacks import AttackSpec, cpu_uniform, format_eps, pgd_maximize
from clrobust.checkpoints import load, save_network
from clrobust.data import CIFAR10_MEAN, CIFAR10_STD, DataOptions, ImageData, chosen_images, load_dataset, to_float
from clrobust.distributed import Dist, owns
from clrobust.errors import ClrobustError
from clrobust.linear_probe import fit_linear_probe
from clrobust.losses import nt_xent, supcon
from clrobust.models import (
    DualBatchNorm2d,
    ModelConfig,
    Network,
    adversarial_bn,
    create_model,
    fast_layout,
    prefers_channels_last,
)
from clrobust.models.norm import sync_batch_norm
from clrobust.names import ADV_METHODS, ADV_OBJECTIVES, ADV_VIEWS, AUGMENTS, SCENARIOS, SCHEMES
from clrobust.provenance import command_line, versions
from clrobust.robustness import accuracy
from clrobust.train.augment import crop_flip_augment, simclr_augment
from clrobust.train.clock import work_seconds

CONTRASTIVE = ("simclr", "supcon")
#: training images the in-training evaluation (``eval_every``) fits a contrastive encoder's linear probe on
WATCH_PROBE_IMAGES = 5000
#: settings a resumed run may change: where it runs, its precision, how often it watches, where its data lie
_RESUME_FREE = ("device", "amp", "eval_every", "data_root", "eval_data_root")


@dataclass
class TrainConfig(DataOptions):
    """Settings of one training run (all recorded in the checkpoint's metadata)."""

    scheme: str = "simclr"
    scenario: str = "st"
    adv_method: str = "pgd"
    arch: str = "resnet18"
    width: int = 16
    proj_dim: Optional[int] = None  # projection output [128; the paper preset 100]
    device: str = "cpu"  # where the network trains (the CLI resolves --device auto)
    #: bf16 autocast and channels-last memory for the forward passes [on CUDA only]
    amp: Optional[bool] = None
    n_train: Optional[int] = None
    epochs: int = 20
    batch_size: int = 256
    lr: Optional[float] = None
    weight_decay: float = 5e-4
    temperature: Optional[float] = None
    eps: float = 8 / 255
    attack_steps: int = 5
    attack_alpha: Optional[float] = None
    clae_weight: float = 1.0
    #: contrastive PGD pre-training: what is perturbed. plain: the un-augmented image, its adversarial pair
    #: forwarded apart from the clean views (the paper); crop-flip: a lightly augmented copy, likewise;
    #: view: augmented view 1, forwarded in one batch with the clean views (clrobust before 0.3); pair: both
    #: augmented views, perturbed together to maximise the loss between them, forwarded apart (ACL's dual stream)
    adv_view: str = "plain"
    #: supervised AT / PAT / FAT objective: clean+adv (the paper) or adv (adversarial examples only)
    adv_objective: str = "clean+adv"
    #: adversarial inputs through their own batch norm (ACL's dual BN); robustness is then evaluated with it
    dual_bn: bool = False
    #: the paper's settings: temperature 0.07, projection 100, PGD-5 with step 0.01, Adam lr 3e-4
    preset: Optional[str] = None
    augment: Optional[str] = None
    classifier_epochs: int = 10
    classifier_lr: Optional[float] = None
    init: Optional[str] = None
    init_load: Dict[str, Any] = field(default_factory=dict)  # how --init is read (LoadOptions fields)
    seed: int = 0
    eval_samples: Optional[int] = None
    #: data set of the final evaluation's test split [the training data's]; e.g. cifar10-mini's exact pixels
    #: when training on a JPEG copy of CIFAR-10
    eval_data: Optional[str] = None
    eval_data_root: Optional[str] = None
    eval_steps: int = 20
    paper_eval_steps: int = 40  # the public code's PGD-40 at 4/255, both threat models
    #: every this many epochs (and after the last), clean and robust accuracy under the final evaluation's
    #: threat-model-II attack on its images, in the history; 0: only the final evaluation. It leaves the
    #: training itself unchanged (random state saved and restored), so a run may resume with another value
    eval_every: int = 0
    extra: Dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.scheme not in SCHEMES:
            raise ClrobustError(f"unknown scheme {self.scheme!r}; use one of: {', '.join(SCHEMES)}.")
        if self.scenario not in SCENARIOS:
            raise ClrobustError(f"unknown scenario {self.scenario!r}; use one of: {', '.join(SCENARIOS)}.")
        if self.adv_method not in ADV_METHODS:
            raise ClrobustError(f"unknown --adv-method {self.adv_method!r}; use pgd or clae.")
        if self.scheme == "supervised" and self.scenario == "pat":
            raise ClrobustError("scenario 'pat' (adversarial linear classifier on a frozen encoder) "
                                "does not apply to 'supervised': the encoder and classifier are "
                                "trained together; use 'at' (or 'fat' to fine-tune adversarially).")
        if self.adv_method == "clae":
            if self.scheme not in CONTRASTIVE:
                raise ClrobustError("--adv-method clae applies to contrastive pre-training "
                                    "(simclr, supcon), not to 'supervised'.")
            if self.scenario == "st":
                raise ClrobustError("--adv-method clae is adversarial pre-training: use it with "
                                    "--scenario at, pat or fat.")
        if self.augment is None:
            self.augment = "simclr" if self.scheme in CONTRASTIVE else "crop-flip"
        if self.augment not in AUGMENTS:
            raise ClrobustError(f"unknown --augment {self.augment!r}; use simclr or crop-flip.")
        if self.attack_steps < 1:
            raise ClrobustError("--attack-steps must be at least 1.")
        if self.eval_every < 0:
            raise ClrobustError(f"--eval-every {self.eval_every} is negative; give a number of epochs, or 0 for "
                                "the final evaluation only.")
        if self.scenario != "st" and not self.eps > 0:
            raise ClrobustError(f"--eps {self.eps:g} with scenario {self.scenario!r} would train without any "
                                "attack while recording an adversarial one; use --scenario st for standard "
                                "training, or give an eps above 0.")
        if self.preset not in (None, "paper"):
            raise ClrobustError(f"unknown --preset {self.preset!r}; use paper.")
        if self.adv_view not in ADV_VIEWS:
            raise ClrobustError(f"unknown --adv-view {self.adv_view!r}; use one of: {', '.join(ADV_VIEWS)}.")
        if self.adv_objective not in ADV_OBJECTIVES:
            raise ClrobustError(f"unknown --adv-objective {self.adv_objective!r}; use one of: "
                                f"{', '.join(ADV_OBJECTIVES)}.")
        if self.dual_bn and self.adv_method == "pgd" and self.adv_view == "view":
            raise ClrobustError("--dual-bn needs the adversarial inputs forwarded on their own; --adv-view view "
                                "forwards them with the clean views (use plain or crop-flip).")
        paper = self.preset == "paper"
        if self.proj_dim is None:
            self.proj_dim = 100 if paper else 128
        if paper and self.attack_alpha is None and self.adv_method == "pgd":
            self.attack_alpha = 0.01  # the paper's fixed step: 5 steps reach at most 12.75/255
        if paper and self.lr is None and self.scheme in CONTRASTIVE:
            self.lr = 3e-4
        if self.temperature is None:
            self.temperature = 0.07 if paper else 0.5 if self.scheme == "simclr" else 0.1
        if self.attack_alpha is None:
            self.attack_alpha = (self.eps if self.adv_method == "clae" and self.attack_steps == 1
                                 else max(2.5 * self.eps / self.attack_steps, 0.01 if self.eps >= 8 / 255 else 0))
        if self.lr is None:
            self.lr = 1e-3 if self.scheme in CONTRASTIVE else 0.05
        if self.classifier_lr is None:
            self.classifier_lr = 0.01 if self.scenario == "fat" else 1e-3
        if self.amp is None:
            self.amp = torch.device(self.device).type == "cuda"

    @property
    def adversarial_pretraining(self) -> bool:
        return self.scenario != "st"


def _cpu_has_bf16() -> bool:
    """Whether this CPU has bf16 instructions (AVX512-BF16 or AMX), without which bf16 autocast is emulated."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # a build without oneDNN: no fast bf16 either
        return False


@contextlib.contextmanager
def frozen_bn_stats(model: nn.Module) -> Iterator[None]:
    """Batch statistics as in training, but running statistics left untouched (for attacks)."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    old = [m.momentum for m in bns]
    for m in bns:
        m.momentum = 0.0
    try:
        yield
    finally:
        for m, o in zip(bns, old):
            m.momentum = o


class Trainer:
    """Runs a :class:`TrainConfig` and writes ``out.safetensors``, ``out.json``, ``out.history.csv``."""

    def __init__(self, cfg: TrainConfig, out: Path, progress: bool = True, log: Callable[[str], None] = print,
                 dist: Optional[Dist] = None):
        self.cfg = cfg
        self.out = Path(out)
        self.state_path = self.out.with_name(self.out.name + ".state.pt")
        self.dist = dist
        self.main = dist is None or dist.is_main
        self.progress = progress and self.main
        self.log = log if self.main else (lambda _m: None)
        self.history: List[Dict[str, Any]] = []
        self._digest: Optional[str] = None

    # ------------------------------------------------------------------ setup
    def _build(self) -> Network:
        cfg = self.cfg
        train = self.train_data
        if cfg.init:
            net = load(cfg.init, **cfg.init_load).network
            if net.config.num_classes != train.num_classes:
                net.classifier = nn.Linear(cast(int, net.encoder.feature_dim), train.num_classes)
                net.config.num_classes = train.num_classes
            return net
        config = ModelConfig(arch=cfg.arch, width=cfg.width, num_classes=train.num_classes,
                             proj_dim=cfg.proj_dim if cfg.scheme in CONTRASTIVE else None,
                             mean=CIFAR10_MEAN, std=CIFAR10_STD,
                             dual_bn=(cfg.adv_method == "clae" or cfg.dual_bn))
        return create_model(config)

    def _test_images(self) -> ImageData:
        """The final evaluation's images: ``eval_samples`` of the test split of ``eval_data`` (or of the training
        data set), the same for every seed (:meth:`ImageData.fixed_subset`)."""
        cfg = self.cfg
        if cfg.eval_data is None:
            return chosen_images(cfg, "test", cfg.eval_samples, sampled=False)
        data = load_dataset(cfg.eval_data, "test", cfg.eval_data_root).fixed_subset(cfg.eval_samples)
        if data.num_classes != self.train_data.num_classes:
            raise ClrobustError(f"--eval-data {cfg.eval_data} has {data.num_classes} classes, the training data "
                                f"{self.train_data.num_classes}; evaluate on the same classes.")
        return data

    @property
    def robust_bn_adversarial(self) -> bool:
        """Whether robustness is read through the adversarial batch norm: dual-BN adversarial pre-training of
        the paper's kind (ACL evaluates and fine-tunes through it; CLAE's dual BN serves training only)."""
        cfg = self.cfg
        return cfg.dual_bn and cfg.adversarial_pretraining and cfg.adv_method == "pgd"

    def _optimizer(self, params, lr: float, epochs: int, kind: str):
        opt: torch.optim.Optimizer
        if kind == "adam":
            opt = torch.optim.Adam(params, lr=lr, weight_decay=1e-6)
        else:
            opt = torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=self.cfg.weight_decay, nesterov=True)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(epochs, 1))
        return opt, sched

    # ------------------------------------------------------------------ run
    def run(self, resume: bool = False) -> Dict[str, Any]:
        cfg = self.cfg
        torch.manual_seed(cfg.seed)
        self.train_data = chosen_images(cfg, "train", cfg.n_train, sampled=False)
        self.test_data = self._test_images()
        self.device = self.dist.device if self.dist is not None else torch.device(cfg.device)
        world = self.dist.world if self.dist is not None else 1
        if min(cfg.batch_size, len(self.train_data)) % world:
            raise ClrobustError(f"a batch of {min(cfg.batch_size, len(self.train_data))} images does not split "
                                f"evenly over {world} processes; use a --batch-size that is a multiple of {world}.")
        net = self._build()
        if self.dist is not None:
            sync_batch_norm(net)
        self._channels_last = prefers_channels_last(net, self.device, bool(cfg.amp))  # inputs follow the net
        self.net = fast_layout(net, self.device, bool(cfg.amp))
        if cfg.amp:  # bf16 autocast: 2.1x on a CPU with bf16 instructions, more on a GPU
            if self.device.type == "cpu" and not _cpu_has_bf16():
                warnings.warn("--amp on a CPU without bf16 instructions (AVX512-BF16 or AMX): bf16 autocast runs "
                              "many times slower than fp32 there (about 30x measured); train with --no-amp.",
                              stacklevel=2)
        if self.main:
            self.out.parent.mkdir(parents=True, exist_ok=True)
        resume_state = None
        if resume and self.state_path.exists():
            resume_state = self._read_state()
            self.history = list(resume_state["history"])
            self.log(f"resuming {resume_state['phase']} after epoch {resume_state['epoch'] + 1}")
        elif resume:
            self.log("nothing to resume: starting from scratch")
        if cfg.init is None:
            self._phase("pretrain", cfg.epochs, resume_state)
        if resume_state is not None and resume_state["phase"] == "pretrain":
            resume_state = None
        self._classifier_phase(resume_state)
        if self.dist is not None:
            sync_batch_norm(self.net, enabled=False)
        metrics = self.evaluate()
        meta = self._metadata(metrics)
        if self.main:
            save_network(self.out, self.net.to(memory_format=torch.contiguous_format), meta)
            self._write_history()
            if self.state_path.exists():
                self.state_path.unlink()
        return meta

    def _phase(self, phase: str, epochs: int, resume_state: Optional[dict]) -> None:
        cfg = self.cfg
        net = self.net
        assert cfg.lr is not None and cfg.classifier_lr is not None  # filled in TrainConfig.__post_init__
        if phase == "pretrain":
            if cfg.scheme in CONTRASTIVE:
                params = [p for n, p in net.named_parameters() if not n.startswith("classifier")]
                opt, sched = self._optimizer(params, cfg.lr, epochs, "adam")
                step = self._contrastive_step
            else:
                opt, sched = self._optimizer(net.parameters(), cfg.lr, epochs, "sgd")
                step = self._supervised_step
        elif phase == "pat":
            opt, sched = self._optimizer(net.classifier.parameters(), cfg.classifier_lr, epochs, "adam")
            step = self._pat_step
        else:  # fat
            opt, sched = self._optimizer(net.parameters(), cfg.classifier_lr, epochs, "sgd")
            step = self._supervised_step
        start = 0
        if resume_state is not None and resume_state["phase"] == phase:
            try:
                net.load_state_dict(resume_state["model"])
                opt.load_state_dict(resume_state["optimizer"])
                sched.load_state_dict(resume_state["scheduler"])
                torch.set_rng_state(resume_state["rng"])
            except (RuntimeError, ValueError, KeyError, TypeError) as exc:
                detail = " ".join(str(exc).split())[:200]
                raise self._bad_state(f"it does not fit this run's network ({detail})") from None
            start = resume_state["epoch"] + 1
        side = int(self.train_data.images.shape[-1])
        augment = simclr_augment(side) if (phase == "pretrain" and cfg.augment == "simclr") else \
            crop_flip_augment(side, padding=max(4, side // 8))
        data = self.train_data
        bs = min(cfg.batch_size, len(data))
        per_epoch = len(data) // bs  # full batches only
        bar = tqdm(total=epochs * per_epoch, initial=start * per_epoch, desc=phase, unit="batch",
                   disable=not self.progress)
        for epoch in range(start, epochs):
            started = work_seconds()
            net.train()
            if phase == "pat":
                net.eval()  # encoder frozen, BN statistics included
            order = torch.randperm(len(data))
            total = torch.zeros((), dtype=torch.float64)
            for i in range(0, per_epoch * bs, bs):
                idx = order[i:i + bs]
                x = to_float(data.images[idx]).to(self.device)
                y = data.labels[idx].to(self.device)
                with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=bool(cfg.amp)):
                    loss = step(x, y, augment)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                self._average_gradients(opt)
                opt.step()
                value = loss.detach().double().cpu()
                total += value
                if not torch.isfinite(value):
                    raise ClrobustError(f"training diverged in {phase} epoch {epoch + 1} (loss {value.item()}); "
                                        "lower --lr.")
                bar.update(1)
            sched.step()
            if self.dist is not None:  # each process's loss is of its share (or, contrastive, of the whole)
                self.dist.all_reduce([total])
                total /= self.dist.world
            mean = float(total) / max(per_epoch, 1)
            seconds = work_seconds() - started
            self.history.append({"phase": phase, "epoch": epoch + 1, "loss": mean,
                                 "lr": opt.param_groups[0]["lr"], "seconds": round(seconds, 3),
                                 "device": self.device.type, "processes": self.dist.world if self.dist else 1,
                                 "precision": "bf16" if cfg.amp else "fp32"})
            bar.set_postfix(epoch=epoch + 1, loss=f"{mean:.4f}")
            watched = ""
            if cfg.eval_every and ((epoch + 1) % cfg.eval_every == 0 or epoch + 1 == epochs):
                h = self.history[-1]
                h.update(self.watch())
                watched = (f"; eval clean {h['eval_clean']:.1%}, robust {h['eval_robust']:.1%} "
                           f"({h['eval_seconds']:.0f} s)")
            if not self.progress:  # a background job's log still says how it goes, one line an epoch
                self.log(f"{phase} epoch {epoch + 1}/{epochs}: loss {mean:.4f}, lr {opt.param_groups[0]['lr']:.3g}, "
                         f"{seconds:.0f} s ({per_epoch * bs / max(seconds, 1e-9):.0f} images/s){watched}")
            self._save_state({"phase": phase, "epoch": epoch, "model": net.state_dict(),
                              "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                              "rng": torch.get_rng_state(), "history": self.history})

    # ------------------------------------------------------------------ resumable state
    def _settings_key(self) -> str:
        """What a resumed run must share with the run that saved the state."""
        import json

        # any device may resume (and its precision follows the device)
        # nor with another --eval-every: watching leaves the training as it is
        # nor with the data in another folder: the images themselves are checked (_data_digest)
        settings = {k: v for k, v in asdict(self.cfg).items() if k not in _RESUME_FREE}
        return json.dumps(settings, sort_keys=True, default=str)

    def _data_digest(self) -> str:
        """What the training images are, wherever they lie: their count, size and a SHA-256 of pixels and labels
        (a resumed run must train on the very images the saved state was trained on)."""
        import hashlib

        if self._digest is None:
            x, y = self.train_data.images, self.train_data.labels
            h = hashlib.sha256()
            h.update(x.contiguous().numpy().tobytes())
            h.update(y.to(torch.int64).contiguous().numpy().tobytes())
            self._digest = f"{len(y)} images {'x'.join(map(str, x.shape[1:]))}, sha256 {h.hexdigest()[:16]}"
        return self._digest

    def _same_settings(self, saved: Any) -> bool:
        """Whether a saved settings key is this run's: equal, or differing only by settings a later clrobust
        added that keep their default here (so a state saved before an upgrade still resumes)."""
        import json
        from dataclasses import MISSING, fields

        if saved == self._settings_key():
            return True
        try:
            old = json.loads(saved)
        except (TypeError, ValueError):
            return False
        if not isinstance(old, dict):
            return False
        for key in _RESUME_FREE:  # a state saved before data folders were free to move named its folder
            old.pop(key, None)
        now = json.loads(self._settings_key())
        defaults = {f.name: f.default for f in fields(TrainConfig) if f.default is not MISSING}
        for key in set(old) | set(now):
            if key in old and key in now:
                if old[key] != now[key]:
                    return False
            elif key in old or json.loads(json.dumps(defaults.get(key, MISSING), default=str)) != now[key]:
                return False
        return True

    def _save_state(self, state: Dict[str, Any]) -> None:
        """Write the state next to the checkpoint, atomically (a kill mid-write leaves the last one)."""
        import os

        if not self.main:
            return
        tmp = self.state_path.with_name(self.state_path.name + ".partial")
        torch.save({**state, "settings": self._settings_key(), "data": self._data_digest()}, tmp)
        os.replace(tmp, self.state_path)

    def _bad_state(self, problem: str) -> ClrobustError:
        return ClrobustError(f"cannot resume from {str(self.state_path)!r}: {problem}; delete it to start from "
                             "scratch, or run without --resume.")

    def _read_state(self) -> Dict[str, Any]:
        """The saved state, checked: readable without running code, complete, and from these settings."""
        try:
            state = torch.load(self.state_path, weights_only=True, map_location="cpu")
        except Exception as exc:  # any unreadable file: the message says which and what to do
            raise self._bad_state(f"the file is unreadable ({' '.join(str(exc).split())[:200]})") from None
        kinds = {"phase": str, "epoch": int, "model": dict, "optimizer": dict, "scheduler": dict,
                 "rng": torch.Tensor, "history": list}
        if not isinstance(state, dict):
            raise self._bad_state(f"it holds a {type(state).__name__}, not a training state")
        wrong = [k for k, kind in kinds.items() if not isinstance(state.get(k), kind)]
        if wrong:
            raise self._bad_state(f"it lacks or mistypes {', '.join(wrong)}")
        if state["phase"] not in ("pretrain", "pat", "fat") or state["epoch"] < 0:
            raise self._bad_state(f"phase {state['phase']!r}, epoch {state['epoch']} is no training step")
        if not self._same_settings(state.get("settings")):
            raise self._bad_state("it was saved by a run with other settings (resume with the same options)")
        # a state saved before the digest was kept resumes as its settings allow
        if "data" in state and state["data"] != self._data_digest():
            raise self._bad_state(f"it was trained on other images ({state['data']}; these are "
                                  f"{self._data_digest()}); resume on the same training images")
        return state

    # ------------------------------------------------------------------ several processes
    def _mine(self, t: torch.Tensor) -> torch.Tensor:
        """This process's rows of a whole-batch tensor (all of it in a single process)."""
        if self.dist is None:
            return t
        k = t.shape[0] // self.dist.world
        return t[self.dist.rank * k:(self.dist.rank + 1) * k]

    def _everyone(self, z: torch.Tensor) -> torch.Tensor:
        """The whole batch's rows from every process's share ``z``, differentiable: each process's gradient
        reaches the process that computed the rows."""
        if self.dist is None:
            return z
        from clrobust.distributed import sum_with_gradient

        k, r, w = z.shape[0], self.dist.rank, self.dist.world
        pad = z.new_zeros((k, *z.shape[1:]))
        return sum_with_gradient(torch.cat([pad] * r + [z] + [pad] * (w - r - 1)))

    def _average_gradients(self, opt: torch.optim.Optimizer) -> None:
        """Average the gradients over the processes (one flat all-reduce), as DistributedDataParallel
        does; the steps call the network through several entry points (features, projection, classifier)
        and attack it between them, which the wrapper cannot follow."""
        if self.dist is None:
            return
        grads = [p.grad for g in opt.param_groups for p in g["params"] if p.grad is not None]
        if not grads:
            return
        flat = torch.cat([g.reshape(-1) for g in grads])
        self.dist.all_reduce([flat])
        flat /= self.dist.world
        offset = 0
        for g in grads:
            g.copy_(flat[offset:offset + g.numel()].view_as(g))
            offset += g.numel()

    def _start(self, whole: torch.Tensor) -> torch.Tensor:
        """This process's rows of a PGD random start drawn for the whole batch (the single-process draw)."""
        return self._mine(cpu_uniform(whole, -self.cfg.eps, self.cfg.eps))

    def _input(self, t: torch.Tensor) -> torch.Tensor:
        return t.contiguous(memory_format=torch.channels_last) if self._channels_last else t

    # ------------------------------------------------------------------ steps
    def _contrastive_loss(self, z1: torch.Tensor, z2: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The loss of the whole batch, from this process's embeddings of its share of each view."""
        assert self.cfg.temperature is not None  # filled in TrainConfig.__post_init__
        z1, z2 = self._everyone(z1.float()), self._everyone(z2.float())
        if self.cfg.scheme == "simclr":
            return nt_xent(z1, z2, self.cfg.temperature)
        return supcon(z1, z2, y, self.cfg.temperature)

    def _project(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.project(self._input(x))

    def _pair_loss(self, both: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The contrastive loss between the two halves of ``both`` (two views of this process's images),
        forwarded as one batch."""
        z = self._project(both)
        n = len(z) // 2
        return self._contrastive_loss(z[:n], z[n:], y)

    def _contrastive_step(self, x: torch.Tensor, y: torch.Tensor, augment: nn.Module) -> torch.Tensor:
        cfg = self.cfg
        assert cfg.attack_alpha is not None  # filled in TrainConfig.__post_init__
        w1, w2 = augment(x), augment(x)
        v1, v2 = self._mine(w1), self._mine(w2)
        n = len(v1)
        if not cfg.adversarial_pretraining:
            return self._pair_loss(torch.cat([v1, v2]), y)
        if cfg.adv_method == "clae":
            # CLAE: perturb view 2 to maximise the whole-batch loss, through the adversarial BN.
            with frozen_bn_stats(self.net):
                z1_ref = self._project(v1).detach()
                with adversarial_bn(self.net):
                    v2_adv = pgd_maximize(lambda xa: self._contrastive_loss(z1_ref, self._project(xa), y),
                                          v2, cfg.eps, cfg.attack_alpha, cfg.attack_steps,
                                          random_start=cfg.attack_steps > 1,
                                          start=self._start(w2) if cfg.attack_steps > 1 else None)
            z = self._project(torch.cat([v1, v2]))
            with adversarial_bn(self.net):
                z_adv = self._project(v2_adv)
            clean = self._contrastive_loss(z[:n], z[n:], y)
            return clean + cfg.clae_weight * self._contrastive_loss(z[:n], z_adv, y)
        if cfg.adv_view == "view":
            # clrobust before 0.3: perturb augmented view 1 to maximise the contrastive loss between it and its
            # clean self, and forward the adversarial view in one batch with the clean views.
            with frozen_bn_stats(self.net):
                z1_ref = self._project(v1).detach()
                v1_adv = pgd_maximize(lambda xa: self._contrastive_loss(z1_ref, self._project(xa), y),
                                      v1, cfg.eps, cfg.attack_alpha, cfg.attack_steps, start=self._start(w1))
            z = self._project(torch.cat([v1, v2, v1_adv]))
            return self._contrastive_loss(z[:n], z[2 * n:], y) + self._contrastive_loss(z[:n], z[n:2 * n], y)
        if cfg.adv_view == "pair":
            # ACL's dual stream: perturb both augmented views together to maximise the contrastive loss between
            # them; loss = the clean pair + the adversarial pair, the adversarial one forwarded on its own (through
            # its own batch norm with dual_bn).
            pair = torch.cat([v1, v2])
            with frozen_bn_stats(self.net), adversarial_bn(self.net, cfg.dual_bn):
                pair_adv = pgd_maximize(lambda xa: self._pair_loss(xa, y), pair, cfg.eps, cfg.attack_alpha,
                                        cfg.attack_steps, start=torch.cat([self._start(w1), self._start(w2)]))
            clean = self._pair_loss(pair, y)
            with adversarial_bn(self.net, cfg.dual_bn):
                return clean + self._pair_loss(pair_adv, y)
        # The paper's adversarial pre-training: perturb the image (un-augmented, or lightly augmented) to
        # maximise the contrastive loss between it and its clean self; loss = the clean views' pair + the
        # adversarial pair, each forwarded on its own (the adversarial one through its own batch norm with
        # dual_bn, as ACL does).
        whole = x if cfg.adv_view == "plain" else self._light(x)
        b = self._mine(whole)
        with frozen_bn_stats(self.net):
            zb_ref = self._project(b).detach()
            with adversarial_bn(self.net, cfg.dual_bn):
                b_adv = pgd_maximize(lambda xa: self._contrastive_loss(zb_ref, self._project(xa), y),
                                     b, cfg.eps, cfg.attack_alpha, cfg.attack_steps, start=self._start(whole))
        clean = self._pair_loss(torch.cat([v1, v2]), y)
        zb = self._project(b)
        with adversarial_bn(self.net, cfg.dual_bn):
            za = self._project(b_adv)
        return clean + self._contrastive_loss(zb, za, y)

    def _light(self, x: torch.Tensor) -> torch.Tensor:
        """The light augmentation of ``--adv-view crop-flip`` (padded crop and flip), drawn for the whole batch."""
        side = int(x.shape[-1])
        return cast(torch.Tensor, crop_flip_augment(side, padding=max(4, side // 8))(x))

    def _supervised_step(self, x: torch.Tensor, y: torch.Tensor, augment: nn.Module) -> torch.Tensor:
        cfg, net = self.cfg, self.net
        assert cfg.attack_alpha is not None  # filled in TrainConfig.__post_init__
        whole = augment(x)
        x, y = self._mine(whole), self._mine(y)
        if not (cfg.adversarial_pretraining and cfg.eps > 0):
            return F.cross_entropy(net(self._input(x)).float(), y)
        with frozen_bn_stats(net), adversarial_bn(net, cfg.dual_bn):
            x_adv = pgd_maximize(lambda xa: F.cross_entropy(net(self._input(xa)).float(), y), x, cfg.eps,
                                 cfg.attack_alpha, cfg.attack_steps, start=self._start(whole))
        with adversarial_bn(net, cfg.dual_bn):
            adv = F.cross_entropy(net(self._input(x_adv)).float(), y)
        if cfg.adv_objective == "adv":
            return adv
        return F.cross_entropy(net(self._input(x)).float(), y) + adv  # clean and adversarial, forwarded apart

    def _pat_step(self, x: torch.Tensor, y: torch.Tensor, augment: nn.Module) -> torch.Tensor:
        cfg, net = self.cfg, self.net
        assert cfg.attack_alpha is not None  # filled in TrainConfig.__post_init__
        whole = augment(x)
        x, y = self._mine(whole), self._mine(y)
        x_adv = pgd_maximize(lambda xa: F.cross_entropy(net(self._input(xa)).float(), y), x, cfg.eps,
                             cfg.attack_alpha, cfg.attack_steps, start=self._start(whole))
        with torch.no_grad():
            f_adv = net.features(self._input(x_adv))
            f = net.features(self._input(x)) if cfg.adv_objective == "clean+adv" else None
        adv = F.cross_entropy(net.classifier(f_adv).float(), y)
        return adv if f is None else F.cross_entropy(net.classifier(f).float(), y) + adv

    # ------------------------------------------------------------------ classifier
    def _classifier_phase(self, resume_state: Optional[dict]) -> None:
        cfg = self.cfg
        self._route_robust_bn(self.net)  # from here on the network is read through its adversarial batch norm
        if cfg.scheme == "supervised":
            if cfg.scenario == "fat":
                self._phase("fat", cfg.classifier_epochs, resume_state)
            return
        if resume_state is None or resume_state["phase"] not in ("pat", "fat"):
            self.fit_linear_probe()
        if cfg.scenario in ("pat", "fat"):
            self._phase(cfg.scenario, cfg.classifier_epochs, resume_state)

    def fit_linear_probe(self) -> None:
        """Fit the classifier on frozen, un-augmented train features (:mod:`clrobust.linear_probe`)."""
        acc = self._fit_probe_into(self.net, self.train_data)
        self.history.append({"phase": "linear-probe", "epoch": 1, "loss": float("nan"), "train_acc": acc})

    def _fit_probe_into(self, net: Network, data: ImageData) -> float:
        """Fit ``net``'s classifier as a linear probe on frozen, un-augmented features of ``data``; its accuracy
        on them."""
        net.eval()
        f = torch.zeros(len(data), cast(int, net.encoder.feature_dim))
        with torch.no_grad():  # each process its batches, summed into every process's copy
            for i, (lo, hi) in enumerate(batch_plan(len(data), 512)):
                if owns(self.dist, i):
                    x = to_float(data.images[lo:hi]).to(self.device)
                    f[lo:hi] = net.features(self._input(x)).float().cpu()
        if self.dist is not None:
            self.dist.all_reduce([f])
        y = data.labels
        head = net.classifier
        fit_linear_probe(f, y, data.num_classes, weight_decay=1e-4, seed=self.cfg.seed).to_linear(head)
        with torch.no_grad():
            return float((head(f.to(self.device)).argmax(1).cpu() == y).float().mean().item())

    def _route_robust_bn(self, net: nn.Module) -> None:
        """Read ``net`` through the adversarial batch norm where the run keeps one for robustness."""
        if self.robust_bn_adversarial:
            for m in net.modules():
                if isinstance(m, DualBatchNorm2d):
                    m.route_adversarial = True

    def watch(self) -> Dict[str, Any]:
        """Clean and robust accuracy of the network as it stands, under the final evaluation's threat-model-II
        attack on its images; a contrastive encoder is read through a linear probe fitted on a copy (on
        :data:`WATCH_PROBE_IMAGES` training images, chosen as every fitted set is: :meth:`ImageData.fixed_subset`).
        The training's network, random state and batch-norm statistics are left as they were."""
        started = work_seconds()
        cpu_rng = torch.get_rng_state()
        cuda_rng = torch.cuda.get_rng_state_all() if self.device.type == "cuda" else None
        net = copy.deepcopy(self.net)
        self._route_robust_bn(net)
        probe = self.cfg.scheme in CONTRASTIVE and not any(h["phase"] in ("linear-probe", "pat", "fat")
                                                            for h in self.history)
        if probe:
            self._fit_probe_into(net, self.train_data.fixed_subset(WATCH_PROBE_IMAGES))
        r = accuracy(net, self.test_data, self.eval_attacks()["threat_model_II"], dist=self.dist)
        torch.set_rng_state(cpu_rng)
        if cuda_rng is not None:
            torch.cuda.set_rng_state_all(cuda_rng)
        return {"eval_clean": r["clean"], "eval_robust": r["adversarial"],
                "eval_seconds": round(work_seconds() - started, 3)}

    # ------------------------------------------------------------------ eval & outputs
    def eval_attacks(self) -> Dict[str, AttackSpec]:
        """The final evaluation's attacks: PGD-20 at 8/255 (threat model II) and the representation attack at
        4/255 (I), and the paper's own, PGD-40 at 4/255 in both threat models."""
        cfg = self.cfg
        nc = self.train_data.num_classes
        return {"threat_model_II": AttackSpec("pgd", 8 / 255, cfg.eval_steps, seed=cfg.seed, n_classes=nc),
                "threat_model_I": AttackSpec("rep", 4 / 255, cfg.eval_steps, seed=cfg.seed, n_classes=nc),
                "paper_threat_model_II": AttackSpec("pgd", 4 / 255, cfg.paper_eval_steps, seed=cfg.seed,
                                                    n_classes=nc),
                "paper_threat_model_I": AttackSpec("rep", 4 / 255, cfg.paper_eval_steps, seed=cfg.seed,
                                                   n_classes=nc)}

    def evaluate(self) -> Dict[str, Any]:
        specs = self.eval_attacks()
        names = {"threat_model_II": "PGD 8/255", "threat_model_I": "rep-attack 4/255",
                 "paper_threat_model_II": "paper II", "paper_threat_model_I": "paper I"}
        run = {names[k]: accuracy(self.net, self.test_data, spec, progress=self.progress, desc=f"eval {names[k]}",
                                  dist=self.dist)
               for k, spec in specs.items()}
        r2 = run["PGD 8/255"]
        return {"clean_accuracy": r2["clean"],
                "pgd20_8_255_accuracy": r2["adversarial"],
                "tm1_pgd20_4_255_accuracy": run["rep-attack 4/255"]["adversarial"],
                "paper_tm2_pgd40_4_255_accuracy": run["paper II"]["adversarial"],
                "paper_tm1_pgd40_4_255_accuracy": run["paper I"]["adversarial"],
                "eval_data": self.test_data.name, "eval_split": "test", "eval_samples": r2["n"],
                "eval_images": (f"{self.test_data.chosen} ({self.test_data.name} test split)"
                                if self.test_data.class_ordered else
                                f"the first {r2['n']} of the {self.test_data.name} test split"),
                "eval_attacks": {k: spec.to_dict() for k, spec in specs.items()}}

    def training_cost(self) -> Dict[str, Any]:
        """What the training took, summed over every epoch of every run that resumed it: seconds of work,
        optimiser steps, images through the optimiser, the devices (with their process counts) and the precisions
        it ran in (a run resumed on another device or with another --amp lists both).
        Epochs from a state saved before timings were recorded count as ``untimed_epochs``."""
        epochs = [h for h in self.history if h["phase"] in ("pretrain", "pat", "fat")]
        timed = [h for h in epochs if h.get("seconds") is not None]
        bs = min(self.cfg.batch_size, len(self.train_data))
        steps = len(epochs) * (len(self.train_data) // bs)
        devices = sorted({f"{h['device']} x{h.get('processes', 1)}" for h in timed})
        precisions = sorted({str(h["precision"]) for h in timed if h.get("precision")})
        return {"train_seconds": round(sum(float(h["seconds"]) for h in timed), 1), "optimizer_steps": steps,
                "train_images": steps * bs, "train_devices": devices,
                **({"train_precisions": precisions} if precisions else {}),
                **({"untimed_epochs": len(epochs) - len(timed)} if len(timed) < len(epochs) else {})}

    def _metadata(self, metrics: Dict[str, Any]) -> Dict[str, Any]:
        cfg = self.cfg
        curve = [{"phase": h["phase"], "epoch": h["epoch"], "clean": h["eval_clean"], "robust": h["eval_robust"]}
                 for h in self.history if "eval_clean" in h]
        if curve:  # the in-training evaluation (--eval-every): the final evaluation's attack and images
            metrics = {**metrics, "during_training": {
                "attack": metrics["eval_attacks"]["threat_model_II"], "images": metrics["eval_images"],
                "robust": "right both clean and attacked", "epochs": curve}}
        return {"training": {**asdict(cfg), "eps_text": format_eps(cfg.eps),
                             "train_attack": self.train_attack_text(), "train_images_chosen": self.train_data.chosen,
                             **self.training_cost(),
                             "command": command_line()},
                "metrics": metrics, "versions": versions(),
                **({"robust_bn": "adversarial"} if self.robust_bn_adversarial else {})}

    def train_attack_text(self) -> str:
        cfg = self.cfg
        if not cfg.adversarial_pretraining:
            return "none"
        method = "CLAE FGSM" if cfg.adv_method == "clae" and cfg.attack_steps == 1 else \
            f"{'CLAE ' if cfg.adv_method == 'clae' else ''}PGD-{cfg.attack_steps}"
        reach = cfg.attack_steps * cast(float, cfg.attack_alpha)  # a fixed step size may fall short of eps
        short = f" (its steps move a pixel {reach * 255:.4g}/255 at most)" if reach < cfg.eps - 1e-12 else ""
        return f"{method} L-inf eps {format_eps(cfg.eps)} step {cfg.attack_alpha:.4g}{short}"

    def _write_history(self) -> None:
        path = self.out.with_name(self.out.name + ".history.csv")
        keys = ["phase", "epoch", "loss", "lr", "train_acc", "seconds", "device", "processes", "precision",
                "eval_clean", "eval_robust", "eval_seconds"]
        with open(path, "w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=keys, extrasaction="ignore")
            w.writeheader()
            for row in self.history:
                w.writerow(row)


def train(cfg: TrainConfig, out: Path, resume: bool = False, progress: bool = True) -> Dict[str, Any]:
    """Train one model as ``cfg`` says and write its checkpoint to ``out``."""
    return Trainer(cfg, out, progress=progress).run(resume=resume)
