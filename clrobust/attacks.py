"""Adversarial attacks: eps parsing, end-to-end attacks through torchattacks, and the
label-free representation attack (threat model I).

All attacks take and return images in [0, 1]; models normalise inside.
"""

from __future__ import annotations

import contextlib
import math
import re
from dataclasses import asdict, dataclass
from fractions import Fraction
from typing import Callable, Dict, Iterator, List, Optional, Sequence, cast

import torch
import torch.nn.functional as F
from torch import nn

from clrobust.errors import ClrobustError
from clrobust.losses import nt_xent
from clrobust.names import ATTACKS, L2_ATTACKS  # the one list, torch-free for the CLI


def parse_eps(text: "str | float", norm: str = "Linf") -> float:
    """Parse an attack radius given as ``8/255``, ``0.0314`` or a number.

    An L-inf radius above 1 is refused (inputs are in [0, 1]): ``8`` most likely meant ``8/255``.
    """
    if isinstance(text, (int, float)):
        value = float(text)
    else:
        s = str(text).strip()
        try:
            s = re.sub(r"\s+", "", s)
            ratio = re.fullmatch(r"([0-9.]+)/([0-9.]+)", s)
            value = float(Fraction(ratio.group(1)) / Fraction(ratio.group(2))) if ratio else float(s)
        except (ValueError, ZeroDivisionError):
            raise ClrobustError(f"bad eps {text!r}: give a number such as 8/255 or 0.0314.") from None
    if not math.isfinite(value) or value < 0:
        raise ClrobustError(f"bad eps {text!r}: it must be a finite number >= 0, such as 8/255.")
    if norm == "Linf" and value > 1:
        raise ClrobustError(f"bad eps {text!r}: inputs are in [0, 1], so an L-inf eps above 1 "
                            f"means nothing; did you mean {text}/255?")
    return value


def parse_eps_list(text: str, norm: str = "Linf") -> List[float]:
    """Comma-separated eps values, e.g. ``2/255,4/255,8/255``."""
    return [parse_eps(t, norm) for t in str(text).split(",") if t.strip()]


def format_eps(eps: float) -> str:
    """``8/255`` when eps is a multiple of 1/255, else the decimal."""
    k = eps * 255
    return f"{round(k)}/255" if abs(k - round(k)) < 1e-6 and round(k) >= 1 else f"{eps:g}"


@dataclass
class AttackSpec:
    """An attack's settings, recorded beside every result."""

    name: str = "pgd"
    eps: float = 8 / 255
    steps: int = 10
    alpha: Optional[float] = None
    random_start: bool = True
    seed: int = 0
    n_classes: int = 10
    norm: str = ""
    #: images per attack call (a multiple of the recording batches, which it groups); None: auto
    #: (:func:`attack_batch_images`)
    batch_size: Optional[int] = None

    def __post_init__(self) -> None:
        if not self.norm:
            self.norm = "L2" if self.name in L2_ATTACKS else "Linf"
        if self.norm not in ("Linf", "L2"):
            raise ClrobustError(f"unknown norm {self.norm!r}; use Linf or L2.")
        if self.norm == "L2" and self.name in ("fgsm", "pgd", "rep"):
            raise ClrobustError(f"attack {self.name!r} is L-inf; for L2 use pgd-l2, apgd or autoattack.")
        if self.name not in ATTACKS:
            raise ClrobustError(f"unknown attack {self.name!r}; use one of: {', '.join(ATTACKS)}.")
        if self.steps < 1:
            raise ClrobustError(f"--steps must be at least 1, got {self.steps}.")
        if self.batch_size is not None and self.batch_size < 1:
            raise ClrobustError(f"--attack-batch-size must be at least 1, got {self.batch_size}.")
        if self.alpha is None:
            self.alpha = self.eps if self.name == "fgsm" else 2.5 * self.eps / self.steps

    def to_dict(self) -> Dict[str, object]:
        d = asdict(self)
        d["eps_text"] = format_eps(self.eps)
        d["threat_model"] = ("none (random noise control)" if self.name == "noise" else
                             "I (label-free, encoder)" if self.name == "rep" else "II (end-to-end)")
        return d

    def noise(self) -> "AttackSpec":
        """The random-noise control of this attack: same eps, norm and seed."""
        return AttackSpec("noise", self.eps, 1, None, seed=self.seed, n_classes=self.n_classes, norm=self.norm,
                          batch_size=self.batch_size)

    @property
    def batch_coupled(self) -> bool:
        """Whether one image's adversarial example depends on the others of its batch (so batches are attacked
        one by one): the representation attack's NT-Xent objective, and the per-batch noise control."""
        return self.name in ("rep", "noise", "none")


#: Images per attack call on CUDA when --attack-batch-size is auto and the inputs are CIFAR-sized.
CUDA_ATTACK_IMAGES = 1024


def attack_batch_images(spec: AttackSpec, batch_size: int, device: str, image_side: int) -> int:
    """Images per attack call: ``spec.batch_size`` when given, else (auto) the recording batch on the CPU
    (every core is busy with one), and on CUDA the largest multiple of it up to :data:`CUDA_ATTACK_IMAGES`
    for inputs up to 64 pixels a side (a GPU waits on the per-call overhead of small batches: AutoAttack took
    46 s per batch of 128 on an H100), the recording batch for larger inputs."""
    if spec.batch_size is not None:
        return spec.batch_size
    if torch.device(device).type == "cuda" and image_side <= 64:
        return max(batch_size, (CUDA_ATTACK_IMAGES // batch_size) * batch_size)
    return batch_size


def noise_batch(eps: float, norm: str, x: torch.Tensor, seed: int, batch_index: int) -> torch.Tensor:
    """``x`` plus random noise of radius ``eps`` (L-inf: a random sign per pixel; L2: a random Gaussian
    direction scaled to norm eps per image), clipped to [0, 1]. The noise is drawn on the CPU from a
    generator seeded by (seed, batch index) and moved to ``x``'s device, so every device draws the same."""
    g = torch.Generator().manual_seed(seed * 100003 + batch_index + 7919)
    if norm == "Linf":
        noise = (torch.randint(0, 2, x.shape, generator=g, dtype=torch.int8).float() * 2 - 1) * eps
    else:
        d = torch.randn(x.shape, generator=g)
        noise = d * (eps / d.flatten(1).norm(dim=1).clamp_min(1e-12)).view(-1, *([1] * (x.dim() - 1)))
    return (x + noise.to(x.device, x.dtype)).clamp(0, 1)


@contextlib.contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Run a block with torch's global RNG seeded, restoring the caller's RNG state afterwards."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


class _Logits(nn.Module):
    """Wraps a model so torchattacks sees a plain logits function."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


def torchattacks_attack(spec: AttackSpec, model: nn.Module):
    """Build the torchattacks object for FGSM, APGD and AutoAttack (threat model II). PGD and L2 PGD are
    clrobust's own loops (:func:`pgd_maximize`, :func:`pgd_l2`), whose random starts come from the CPU
    generator; torchattacks draws its starts on the device."""
    import torchattacks as ta

    m = _Logits(model)
    if spec.name == "fgsm":
        return ta.FGSM(m, eps=spec.eps)
    if spec.name == "apgd":
        return ta.APGD(m, norm=spec.norm, eps=spec.eps, steps=spec.steps, n_restarts=1,
                       loss="ce", seed=spec.seed)
    if spec.name == "autoattack":
        # The reference implementation's "standard" step counts, set explicitly
        # (torchattacks' own AutoAttack runs 10 steps).
        return ta.MultiAttack([
            ta.APGD(m, norm=spec.norm, eps=spec.eps, steps=100, n_restarts=1, loss="ce", seed=spec.seed),
            ta.APGDT(m, norm=spec.norm, eps=spec.eps, steps=100, n_restarts=1, n_classes=spec.n_classes,
                     seed=spec.seed),
            ta.FAB(m, norm=spec.norm, eps=spec.eps, steps=100, n_restarts=1, multi_targeted=True,
                   n_classes=spec.n_classes, seed=spec.seed),
            ta.Square(m, norm=spec.norm, eps=spec.eps, n_queries=5000, n_restarts=1, seed=spec.seed),
        ])
    raise ValueError(spec.name)


def cpu_uniform(like: torch.Tensor, low: float, high: float) -> torch.Tensor:
    """U(low, high) of ``like``'s shape and dtype, drawn from torch's CPU generator and moved to ``like``'s
    device: the same draw on every device, so a CPU and a CUDA run with one seed start from the same point."""
    return torch.empty(like.shape, dtype=like.dtype).uniform_(low, high).to(like.device)


def pgd_maximize(loss_fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, eps: float,
                 alpha: float, steps: int, random_start: bool = True,
                 start: Optional[torch.Tensor] = None) -> torch.Tensor:
    """L-inf PGD that maximises ``loss_fn(x_adv)`` within ``eps`` of ``x``, staying in [0, 1]; the random
    start is drawn on the CPU (:func:`cpu_uniform`), or is ``start`` (a perturbation of ``x``'s shape: a
    process's rows of a start drawn for the whole batch)."""
    x = x.detach()
    if eps == 0:
        return x.clone()
    if start is not None:
        delta = start.to(x.device, x.dtype)
    else:
        delta = cpu_uniform(x, -eps, eps) if random_start else torch.zeros_like(x)
    x_adv = (x + delta).clamp_(0, 1)
    for _ in range(steps):
        x_adv.requires_grad_(True)
        grad, = torch.autograd.grad(loss_fn(x_adv), x_adv)
        with torch.no_grad():
            x_adv = x_adv + alpha * grad.sign()
            x_adv = torch.min(torch.max(x_adv, x - eps), x + eps).clamp_(0, 1)
    return x_adv.detach()


def l2_start(like: torch.Tensor, eps: float) -> torch.Tensor:
    """L2 PGD's random start (as torchattacks' PGDL2): a Gaussian direction at a radius uniform in [0, eps],
    drawn on the CPU and moved to ``like``'s device."""
    b = like.shape[0]
    direction = torch.empty(like.shape, dtype=like.dtype).normal_()
    radius = torch.zeros(b, *([1] * (like.dim() - 1)), dtype=like.dtype).uniform_(0, 1)
    norms = direction.flatten(1).norm(dim=1).view(b, *([1] * (like.dim() - 1)))
    return (direction * (radius / norms * eps)).to(like.device)


def pgd_l2(loss_fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, eps: float, alpha: float,
           steps: int, random_start: bool = True, start: Optional[torch.Tensor] = None) -> torch.Tensor:
    """L2 PGD (as torchattacks' PGDL2): a random start (:func:`l2_start`, or ``start``), steps along the
    L2-normalised gradient, projection onto the eps ball and [0, 1]."""
    x = x.detach()
    if eps == 0:
        return x.clone()
    b = x.shape[0]
    x_adv = x.clone()
    if start is not None:
        x_adv = (x + start.to(x.device, x.dtype)).clamp(0, 1)
    elif random_start:
        x_adv = (x + l2_start(x, eps)).clamp(0, 1)
    for _ in range(steps):
        x_adv.requires_grad_(True)
        grad, = torch.autograd.grad(loss_fn(x_adv), x_adv)
        with torch.no_grad():
            grad = grad / (grad.flatten(1).norm(dim=1) + 1e-10).view(b, *([1] * (x.dim() - 1)))
            delta = x_adv + alpha * grad - x
            scale = torch.clamp(eps / delta.flatten(1).norm(dim=1), max=1.0)
            x_adv = (x + delta * scale.view(b, *([1] * (x.dim() - 1)))).clamp(0, 1)
    return x_adv.detach()


def representation_attack(model: nn.Module, x: torch.Tensor, eps: float, alpha: float, steps: int,
                          temperature: float = 0.5, random_start: bool = True) -> torch.Tensor:
    """Threat model I: maximise the NT-Xent loss between clean and perturbed representations.

    Uses the projection head when the model has one, the encoder features otherwise;
    needs no labels.
    """
    embed = cast(Callable[[torch.Tensor], torch.Tensor],
                 model.project if getattr(model, "projector", None) is not None else model.features)
    with torch.no_grad():
        z_clean = embed(x).detach()
    return pgd_maximize(lambda xa: nt_xent(z_clean, embed(xa), temperature), x, eps, alpha, steps,
                        random_start)


def attack_batches(spec: AttackSpec, model: nn.Module, xs: Sequence[torch.Tensor], ys: Sequence[torch.Tensor],
                   indices: Sequence[int]) -> List[torch.Tensor]:
    """Adversarial versions of several batches (global indices ``indices``) crafted in one call, to fill a GPU.

    clrobust's PGD loops start every image where :func:`attack_batch` would (the per-batch seeded CPU draws),
    so the result is the batch-by-batch one up to arithmetic; batch-coupled attacks
    (:attr:`AttackSpec.batch_coupled`) run batch by batch; torchattacks' attacks run once on the whole group,
    seeded by its first batch's index (their random draws depend on the group).
    """
    if len(xs) == 1 or spec.batch_coupled or spec.eps == 0:
        return [attack_batch(spec, model, x, y, i) for x, y, i in zip(xs, ys, indices)]
    x, y = torch.cat(list(xs)), torch.cat(list(ys))
    sizes = [len(t) for t in xs]
    was_training = model.training
    model.eval()
    try:
        assert spec.alpha is not None  # filled in AttackSpec.__post_init__
        if spec.name in ("pgd", "pgd-l2"):
            starts = []
            for xi, i in zip(xs, indices):
                with seeded(spec.seed * 100003 + i):  # attack_batch's seed and first draw
                    if not spec.random_start:
                        starts.append(torch.zeros_like(xi))
                    elif spec.name == "pgd":
                        starts.append(cpu_uniform(xi, -spec.eps, spec.eps))
                    else:
                        starts.append(l2_start(xi, spec.eps))

            # each image weighs 1 / its batch's size, as in its batch's mean loss: the same gradient per image
            # (L2 PGD normalises it with a floor of 1e-10, so its scale matters)
            weight = torch.cat([torch.full((n,), 1.0 / n, device=x.device) for n in sizes])

            def loss(xa: torch.Tensor) -> torch.Tensor:
                return (F.cross_entropy(model(xa), y, reduction="none") * weight).sum()

            run = pgd_maximize if spec.name == "pgd" else pgd_l2
            out = run(loss, x, spec.eps, spec.alpha, spec.steps, spec.random_start, start=torch.cat(starts))
        else:
            with seeded(spec.seed * 100003 + indices[0]):
                out = torchattacks_attack(spec, model)(x, y).detach()
    finally:
        model.train(was_training)
    return list(out.split(sizes))


def attack_batch(spec: AttackSpec, model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                 batch_index: int = 0) -> torch.Tensor:
    """Adversarial version of one batch against ``model`` (in eval mode), seeded per batch."""
    if spec.name == "none" or spec.eps == 0:
        return x.clone()
    if spec.name == "noise":
        return noise_batch(spec.eps, spec.norm, x, spec.seed, batch_index)
    was_training = model.training
    model.eval()
    try:
        with seeded(spec.seed * 100003 + batch_index):
            assert spec.alpha is not None  # filled in AttackSpec.__post_init__
            if spec.name == "rep":
                return representation_attack(model, x, spec.eps, spec.alpha, spec.steps,
                                             random_start=spec.random_start)
            if spec.name in ("pgd", "pgd-l2"):  # clrobust's own loops: random starts from the CPU generator
                def loss(xa: torch.Tensor) -> torch.Tensor:
                    return F.cross_entropy(model(xa), y)

                run = pgd_maximize if spec.name == "pgd" else pgd_l2
                return run(loss, x, spec.eps, spec.alpha, spec.steps, spec.random_start)
            return torchattacks_attack(spec, model)(x, y).detach()
    finally:
        model.train(was_training)
