"""Options shared by the commands, declared once: models, data, attack, device, seed, output, progress.

Choices come from the registries they name (attacks, data sets, stems, schemes ...),
never from copied lists.
"""

from __future__ import annotations

import functools
import math
from typing import TYPE_CHECKING, Any, Callable, Optional, Tuple

import click

from clrobust.errors import ClrobustError
from clrobust.names import ATTACKS, DATASETS, STEMS

if TYPE_CHECKING:  # the CLI imports torch only once a command runs, so --help starts fast
    from clrobust.checkpoints import LoadOptions

F = Callable[..., Any]


class EpsType(click.ParamType):
    """An attack radius written as ``8/255`` or ``0.0314`` (``many``: a comma-separated list).

    The text is checked here and kept as written; the command parses it with the
    attack's norm (:func:`clrobust.attacks.parse_eps`), so an L-inf radius above 1
    is refused with a hint (``8`` most likely meant ``8/255``).
    """

    name = "eps"

    def __init__(self, many: bool = False) -> None:
        self.many = many

    def convert(self, value: Any, param: Optional[click.Parameter], ctx: Optional[click.Context]) -> str:
        from clrobust.attacks import parse_eps, parse_eps_list

        text = str(value).strip()
        try:
            (parse_eps_list if self.many else parse_eps)(text, "L2")  # syntax and sign; the norm comes later
        except ClrobustError as exc:
            self.fail(str(exc), param, ctx)
        return text


class PositiveFloat(click.ParamType):
    """A finite float above zero (``zero_ok``: zero too): nan, inf and negatives are refused by name."""

    name = "float"

    def __init__(self, zero_ok: bool = False) -> None:
        self.zero_ok = zero_ok

    def convert(self, value: Any, param: Optional[click.Parameter], ctx: Optional[click.Context]) -> float:
        try:
            number = float(value)
        except (TypeError, ValueError):
            self.fail(f"{value!r} is not a number.", param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number.", param, ctx)
        if number < 0 or (number == 0 and not self.zero_ok):
            self.fail(f"{value!r} must be {'at least 0' if self.zero_ok else 'above 0'}.", param, ctx)
        return number


#: Counts of things (images, steps, epochs ...): at least 1, or at least 0.
COUNT = click.IntRange(min=1)
COUNT0 = click.IntRange(min=0)
POSITIVE = PositiveFloat()
NONNEGATIVE = PositiveFloat(zero_ok=True)

EPS = EpsType()
EPS_LIST = EpsType(many=True)


_MODEL_OPTION_NAMES = ("arch", "stem", "fmt", "normalize", "bn", "allow_missing", "trust")


def model_options(f: F) -> F:
    """How model files are read: the same on every command that takes models.

    The command receives them as one ``load_options`` argument (a :class:`LoadOptions`).
    """
    command = f

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        values = {name: kwargs.pop(name) for name in _MODEL_OPTION_NAMES}
        return command(*args, load_options=load_options(**values), **kwargs)

    f = wrapper
    f = click.option("--trust-checkpoint", "trust", is_flag=True,
                     help="Allow full unpickling (can run code hidden in the file): only for trusted sources.")(f)
    f = click.option("--allow-missing", is_flag=True,
                     help="Load even when encoder weights are missing or mis-shaped (they stay random).")(f)
    f = click.option("--bn", "bn", type=click.Choice(["auto", "clean", "adversarial"]), default="auto",
                     show_default=True,
                     help="Batch norm of dual-BN networks (ACL, AdvCL, CLAE): auto is the one their authors "
                          "evaluate robustness with (ACL, AdvCL: adversarial; CLAE: clean).")(f)
    f = click.option("--normalize", default=None,
                     help="Input normalisation: a preset (cifar10, cifar10-kuangliu, cifar10-dm, cifar100, "
                          "imagenet, half, none) or 'm1,m2,m3,s1,s2,s3' [from the file, else its format's].")(f)
    f = click.option("--format", "fmt", default=None,
                     help="Force a third-party checkpoint format by name instead of detecting it "
                          "(`clrobust inspect` shows the detected one).")(f)
    f = click.option("--stem", type=click.Choice(list(STEMS)), default=None,
                     help="Stem of third-party ResNets [from the first conv's kernel and the format].")(f)
    f = click.option("--arch", default=None,
                     help="Architecture of third-party files: resnet18/34/50, preact-resnet18(-v1), "
                          "wrn-DEPTH-WIDEN, dm-wrn-DEPTH-WIDEN[-relu], dm-preact-resnet18/34[-relu] "
                          "[inferred from tensor shapes].")(f)
    return f


def load_options(arch: Optional[str], stem: Optional[str], fmt: Optional[str], normalize: Optional[str],
                 bn: str, allow_missing: bool, trust: bool) -> "LoadOptions":
    """The :class:`LoadOptions` of :func:`model_options`' values."""
    from clrobust.checkpoints import LoadOptions

    adversarial_bn = None if bn == "auto" else bn == "adversarial"
    return LoadOptions(arch=arch, format=fmt, normalize=normalize, trust=trust, adversarial_bn=adversarial_bn,
                       strict=not allow_missing, stem=stem)


def classifier_option(f: F) -> F:
    """--classifier: a model's own head, or a linear probe fitted on its frozen features."""
    from clrobust.names import CLASSIFIER_MODES

    return click.option("--classifier", type=click.Choice(list(CLASSIFIER_MODES)), default="auto",
                        show_default=True,
                        help="auto: a model's own linear head when it fits the data set, a linear probe on "
                             "frozen train features otherwise (head-less encoders); probe: always drop the "
                             "head and fit the probe (e.g. an ImageNet head on CIFAR).")(f)


def _into_data_options(f: F, names: Tuple[str, ...]) -> F:
    """Wrap a command so that the options ``names`` reach it inside one ``data_options`` dict (the keyword
    arguments of :class:`~clrobust.data.DataOptions` / ``SampledDataOptions``), whichever decorator is first."""
    command = f

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        values = {name: kwargs.pop(name) for name in names}
        kwargs["data_options"] = {**kwargs.get("data_options", {}), **values}
        return command(*args, **kwargs)

    return wrapper


def data_options(f: F) -> F:
    """--data, --data-root, --skip-bad-images, --image-size and --resize; the command receives them as one
    ``data_options`` dict (with ``sampling_options``' values when it has those too)."""
    f = _into_data_options(f, ("data", "data_root", "skip_bad_images", "image_size", "resize"))
    f = click.option("--resize", default=None, type=click.IntRange(min=1),
                     help="Image folders: resize the shorter side to this many pixels before the centre crop "
                          "[--image-size; ImageNet's evaluation: --resize 256 --image-size 224].")(f)
    f = click.option("--image-size", default=32, show_default=True, type=click.IntRange(min=8),
                     help="Image folders: side of the square centre crop the models see.")(f)
    f = click.option("--skip-bad-images", is_flag=True,
                     help="Image folders: leave out files that cannot be read as images (each named in a "
                          "warning) instead of stopping at the first.")(f)
    f = click.option("--data-root", type=click.Path(file_okay=False), default=None,
                     help="Folder of cifar10/cifar100 (official python format) or of an image folder.")(f)
    f = click.option("--data", default="cifar10-mini", show_default=True,
                     help=f"Data set: {', '.join(DATASETS)} (cifar10-mini is embedded).")(f)
    return f


ATTACK_BATCH_HELP = ("Images per attack call, grouping whole --batch-size batches [auto: one batch on the CPU; on "
                     "CUDA up to 1024 CIFAR-size images]. clrobust's PGD gives the same examples whatever the "
                     "grouping; torchattacks' APGD and AutoAttack draw per call.")


def attack_batch_size_option(f: F) -> F:
    return click.option("--attack-batch-size", default=None, type=click.IntRange(min=1),
                        help=ATTACK_BATCH_HELP)(f)


def attack_options(f: F) -> F:
    """--attack, --eps, --steps, --alpha, --attack-batch-size of the attack crafted against each model."""
    f = attack_batch_size_option(f)
    f = click.option("--alpha", default=None, type=POSITIVE, help="Attack step size [2.5 eps / steps].")(f)
    f = click.option("--steps", default=10, show_default=True, type=COUNT, help="Attack iterations.")(f)
    f = click.option("--eps", default="8/255", show_default=True, type=EPS,
                     help="Attack radius: 8/255 or 0.0314 (L2: 0.5).")(f)
    f = click.option("--attack", type=click.Choice(list(ATTACKS)), default="pgd", show_default=True,
                     help="Attack crafted against each model: end to end through its classifier "
                          "(threat model II), or 'rep', the label-free representation attack (threat model I).")(f)
    return f


def attack_spec(attack: str, eps: str, steps: int, alpha: Optional[float], seed: int,
                attack_batch_size: Optional[int] = None) -> Any:
    """The :class:`~clrobust.attacks.AttackSpec` of :func:`attack_options`' values."""
    from clrobust.attacks import L2_ATTACKS, AttackSpec, parse_eps

    norm = "L2" if attack in L2_ATTACKS else "Linf"
    return AttackSpec(attack, parse_eps(eps, norm), steps, alpha, seed=seed, batch_size=attack_batch_size)


def sampling_options(f: F) -> F:
    """--sampling and --sample-seed: which --n-samples images of the split are used (in ``data_options``)."""
    from clrobust.names import SAMPLINGS

    f = _into_data_options(f, ("sampling", "sample_seed"))
    f = click.option("--sample-seed", default=0, show_default=True, type=click.IntRange(0, 2 ** 63 - 1),
                     help="Seed of the stratified image subset (independent of --seed).")(f)
    f = click.option("--sampling", type=click.Choice(list(SAMPLINGS)), default="stratified", show_default=True,
                     help="How the --n-samples images are chosen: a seeded class-stratified random subset "
                          "(recorded with its indices' hash), or the first N of the split.")(f)
    return f


def bootstrap_option(f: F) -> F:
    """--bootstrap N: replicates over images for every interval."""
    from clrobust.names import DEFAULT_REPLICATES

    return click.option("--bootstrap", default=DEFAULT_REPLICATES, show_default=True, type=COUNT0,
                        help="Bootstrap replicates over images for the 95% intervals of every CKA, disparity and "
                             "paired difference (seeded by --seed; 0 turns them off).")(f)


#: How every fitted set's N images are chosen (:meth:`clrobust.data.ImageData.fixed_subset`), in --help's words.
FITTED_N = ("the first N, or a seeded class-stratified N where the split lists its images class by class, as an "
            "image folder does")


def probe_train_option(default: Optional[int] = None, name: str = "--probe-train") -> Callable[[F], F]:
    """Train images a linear probe is fitted on (head-less encoders, per-layer probes)."""
    shown = "all" if default is None else str(default)
    return click.option(name, "probe_train", default=default, type=COUNT,
                        help=f"Train images a linear probe is fitted on, for models without a classifier of "
                             f"their own ({FITTED_N}) [{shown}].")


def seed_option(f: F) -> F:
    return click.option("--seed", default=0, show_default=True, type=click.IntRange(0, 2 ** 63 - 1),
                        help="Seed for data order, augmentations, probe initialisation and attack random "
                             "starts.")(f)


def resolve_device(value: str) -> str:
    """``auto`` -> ``cuda`` when a GPU is available, else ``cpu``; other values unchanged."""
    import torch

    if value.strip().lower() == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return value


def check_device(ctx: Optional[click.Context], param: Optional[click.Parameter], value: str) -> str:
    """--device: ``auto`` (a GPU when there is one, else the CPU), ``cpu``, ``cuda`` or ``cuda:N`` on a
    machine that has that GPU; anything else is refused. Returns the device the run uses (``auto`` resolved,
    so settings record the real one)."""
    import torch

    value = resolve_device(value)
    try:
        dev = torch.device(value)
    except (RuntimeError, ValueError):
        raise click.BadParameter(f"{value!r} is not a device; use auto, cpu, cuda or cuda:N.") from None
    if dev.type not in ("cpu", "cuda"):
        raise click.BadParameter(f"{value!r}: clrobust runs on cpu or cuda; use --device cpu.")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise click.BadParameter("CUDA is not available on this machine; use --device cpu.")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise click.BadParameter(f"{value!r}: this machine has {torch.cuda.device_count()} GPU(s) "
                                     f"(cuda:0 to cuda:{torch.cuda.device_count() - 1}).")
    return value


def device_option(f: F) -> F:
    return click.option("--device", default="auto", show_default=True, callback=check_device,
                        help="auto (CUDA when available, else the CPU), cpu, cuda, cuda:1 ...")(f)


def out_options(default: str, what: str = "results") -> Callable[[F], F]:
    """--out (a folder) and --overwrite."""
    def deco(f: F) -> F:
        f = click.option("--overwrite", is_flag=True, help=f"Replace {what} already in --out.")(f)
        f = click.option("--out", default=default, show_default=True, type=click.Path(file_okay=False),
                         help="Output folder.")(f)
        return f
    return deco


def progress_option(f: F) -> F:
    return click.option("--progress/--no-progress", default=True, show_default=True,
                        help="Show progress bars.")(f)


def join_processes(settings: Any) -> Any:
    """Under torchrun, this process's :class:`~clrobust.distributed.Dist`, with ``settings.device`` set to the
    rank's own device (each rank its own GPU); None for a single process."""
    from clrobust.distributed import Dist

    dist = Dist.from_env(settings.device)
    if dist is not None:
        settings.device = str(dist.device)
    return dist
