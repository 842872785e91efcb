"""The known third-party checkpoint layouts, as data: one :class:`CheckpointFormat` per source.

Every rule below is applied by the same generic code (``mapping.py``), so adding
a source means adding an entry, not a branch::

    from clrobust.checkpoints import CheckpointFormat, register_format, KUANGLIU

    register_format(CheckpointFormat(
        name="my-lab", source="My lab's SimCLR",
        recognise=(r"^net\\.conv1\\.weight$", r"^net\\.proj\\."),
        prefixes=("net.",), heads=(r"^net\\.proj\\.",), renames=KUANGLIU,
        normalize="cifar10"))

Key patterns are regular expressions matched against the state dict's keys after
the wrappers common to every key are removed (a leading ``module.`` on all keys,
``_orig_mod.`` anywhere). The canonical names are clrobust's: ``stem.conv``,
``stem.bn``, ``layerK.J.conv1/bn1/.../shortcut.0/shortcut.1``, the final ``bn`` of
pre-activation nets, ``classifier`` and ``normalize.mean/std``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

from clrobust.errors import ClrobustError

Rename = Tuple[str, str]
#: (pattern, replacement, branch): a batch-norm copy; branch None reads the ``branch`` group.
BNBranch = Tuple[str, str, Optional[int]]

#: kuangliu/pytorch-cifar naming: ``conv1``, ``bn1``, ``layerK.J.shortcut.0/1``, ``linear``.
KUANGLIU: Tuple[Rename, ...] = (
    (r"^conv1\.", "stem.conv."), (r"^bn1\.", "stem.bn."), (r"^linear\.", "classifier."),
)
#: torchvision naming: ``conv1``, ``bn1``, ``layerK.J.downsample.0/1``, ``fc``.
TORCHVISION: Tuple[Rename, ...] = (
    (r"^conv1\.", "stem.conv."), (r"^bn1\.", "stem.bn."), (r"\.downsample\.", ".shortcut."),
    (r"^fc\.", "classifier."),
)
#: ACL's multi-BN ResNet: ``downsample.conv`` / ``downsample.bn``.
ACL_NAMES: Tuple[Rename, ...] = (
    (r"\.downsample\.conv\.", ".shortcut.0."), (r"\.downsample\.bn\.", ".shortcut.1."),
) + TORCHVISION
#: RobustBench / TRADES WideResNet: ``blockK.layer.J``, ``convShortcut``, final ``bn1``, ``fc``.
WRN_NAMES: Tuple[Rename, ...] = (
    (r"^conv1\.", "stem.conv."), (r"^block(\d+)\.layer\.", r"layer\1."), (r"\.convShortcut\.", ".shortcut.0."),
    (r"^bn1\.", "bn."), (r"^fc\.", "classifier."),
)
#: kuangliu / locuslab PreActResNet: ``conv1`` (no stem BN), ``layerK.J.shortcut.0``, final ``bn``, ``linear``.
PREACT_NAMES: Tuple[Rename, ...] = ((r"^conv1\.", "stem.conv."), (r"^linear\.", "classifier."))
#: Names shared by DeepMind's layouts: ``batchnorm_0/1``, ``shortcut`` (a bare conv), final
#: ``batchnorm``, ``logits`` and the ``mean``/``std`` buffers.
_DM_BLOCK: Tuple[Rename, ...] = (
    (r"\.batchnorm_0\.", ".bn1."), (r"\.batchnorm_1\.", ".bn2."), (r"\.shortcut\.", ".shortcut.0."),
    (r"^batchnorm\.", "bn."), (r"^logits\.", "classifier."), (r"^mean$", "normalize.mean"),
    (r"^std$", "normalize.std"),
)
#: DeepMind's WideResNet (``DMWideResNet``): ``init_conv``, ``layer.K.block.J.{conv_0,conv_1}``.
DM_WRN_NAMES: Tuple[Rename, ...] = (
    (r"^init_conv\.", "stem.conv."), (r"^layer\.0\.block\.", "layer1."), (r"^layer\.1\.block\.", "layer2."),
    (r"^layer\.2\.block\.", "layer3."), (r"\.conv_0\.", ".conv1."), (r"\.conv_1\.", ".conv2."),
) + _DM_BLOCK
#: DeepMind's PreActResNet (``DMPreActResNet``): ``conv_2d``, ``layer_K.J.{batchnorm_0,conv_2d_1,...}``.
DM_PREACT_NAMES: Tuple[Rename, ...] = (
    (r"^conv_2d\.", "stem.conv."), (r"^layer_0\.", "layer1."), (r"^layer_1\.", "layer2."),
    (r"^layer_2\.", "layer3."), (r"^layer_3\.", "layer4."), (r"\.conv_2d_1\.", ".conv1."),
    (r"\.conv_2d_2\.", ".conv2."),
) + _DM_BLOCK
#: Normalisation buffers stored inside models, applied after every format's renames.
IN_MODEL_NORMALIZE: Tuple[Rename, ...] = (
    (r"^mu$", "normalize.mean"), (r"^sigma$", "normalize.std"),
    (r"^normalizer\.new_mean$", "normalize.mean"), (r"^normalizer\.new_std$", "normalize.std"),
    (r"^normaliz(e|er|ation)\.(mean|std)$", r"normalize.\2"),
)

#: Named input normalisations (mean, std); ``none`` means inputs are used as they are.
NORMALIZATIONS: Dict[str, Optional[Tuple[Tuple[float, ...], Tuple[float, ...]]]] = {
    "none": None,
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar10-kuangliu": ((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)),
    "cifar10-dm": ((0.4914, 0.4822, 0.4465), (0.2471, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "half": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
}


@dataclass(frozen=True)
class CheckpointFormat:
    """How to recognise one source's checkpoints and map them onto a clrobust Network.

    Attributes:
        name: short identifier (``--format NAME``).
        source: the project, for reports.
        recognise: regexes; each must match at least one (unwrapped) key.
        reject: regexes that no (unwrapped) key may match; each counts as a condition.
        top_keys: top-level keys the file must also have (e.g. SupContrast's ``opt``).
        prefixes: encoder prefixes to strip (longest match wins).
        renames: (regex, replacement) applied in order to every stripped key.
        heads: regexes (on unwrapped keys, before stripping) of keys to drop and report.
        normalize: default input normalisation (a :data:`NORMALIZATIONS` name) when the
            checkpoint holds no normalisation buffers.
        small_stem: the stem a 3x3 first conv means (``cifar``, ``cifar-pad2`` or ``cifar-norelu``).
        arch_prefix: prefix of the pre-activation architecture read off the shapes, for layouts
            whose shapes match another family's (``dm-``: ``wrn-28-10`` becomes ``dm-wrn-28-10``).
        bn_branches: patterns of extra batch-norm copies (dual/triple BN), branch 0 = clean.
        adversarial_branch: the branch loaded as the adversarial BN.
        robust_bn: the branch its authors evaluate robustness with, used unless the user
            chooses (``clean`` or ``adversarial``; ACL and AdvCL use the adversarial BN, CLAE
            the clean one).
        split_bn: running statistics may hold ``C x splits`` values (averaged on load).
        notes: caveats shown by ``clrobust inspect``.
    """

    name: str
    source: str
    recognise: Tuple[str, ...]
    reject: Tuple[str, ...] = ()
    top_keys: Tuple[str, ...] = ()
    prefixes: Tuple[str, ...] = ()
    renames: Tuple[Rename, ...] = ()
    heads: Tuple[str, ...] = ()
    normalize: str = "none"
    small_stem: str = "cifar"
    arch_prefix: str = ""
    bn_branches: Tuple[BNBranch, ...] = ()
    adversarial_branch: int = 1
    robust_bn: str = "clean"
    split_bn: bool = False
    notes: Tuple[str, ...] = field(default=())

    def __post_init__(self) -> None:
        if self.normalize not in NORMALIZATIONS:
            raise ValueError(f"format {self.name!r}: unknown normalisation {self.normalize!r}")
        if self.robust_bn not in ("clean", "adversarial"):
            raise ValueError(f"format {self.name!r}: robust_bn must be 'clean' or 'adversarial'")
        if self.small_stem not in ("cifar", "cifar-pad2", "cifar-norelu"):
            raise ValueError(f"format {self.name!r}: small_stem must be 'cifar', 'cifar-pad2' or 'cifar-norelu'")

    @property
    def n_conditions(self) -> int:
        return len(self.recognise) + len(self.reject) + len(self.top_keys)


_MULTI_BN: Tuple[BNBranch, ...] = ((r"\.bn_list\.(?P<branch>\d+)\.", ".", None),)

FORMATS: List[CheckpointFormat] = [
    CheckpointFormat(
        "supcontrast", "SupContrast (HobbitLong)",
        recognise=(r"^encoder\.(module\.)?conv1\.weight$",), top_keys=("opt", "model"),
        prefixes=("encoder.module.", "encoder."), renames=KUANGLIU + ((r"^fc\.", "classifier."),),
        heads=(r"^head\.",), normalize="cifar10-kuangliu"),
    CheckpointFormat(
        "cl-robustness", "CL-Robustness (CLNet / EvalNet)",
        recognise=(r"^encoder\.encoder\.conv1\.weight$",), prefixes=("encoder.encoder.",),
        renames=KUANGLIU + ((r"^head\.", "classifier."),), heads=(r"^head\.\d+\.",),
        notes=("EvalNet returns F.normalize(logits); clrobust returns the raw logits (same argmax).",)),
    CheckpointFormat(
        "deacl", "DeACL (solo-learn based)",
        recognise=(r"^backbone\.normalize\.mean$", r"^backbone\.conv1\.weight$"), top_keys=("state_dict",),
        prefixes=("backbone.",), renames=TORCHVISION, heads=(r"^(?!backbone\.|classifier\.)",),
        normalize="cifar10", small_stem="cifar-pad2",
        notes=("classifier.* is the online linear probe.",)),
    CheckpointFormat(
        "solo-learn", "solo-learn",
        recognise=(r"^(backbone|encoder)\.conv1\.weight$",
                   r"^(projector\.\d+\.running_mean|momentum_backbone\.|classifier\.weight$)"),
        top_keys=("state_dict",), prefixes=("backbone.", "encoder."), renames=TORCHVISION,
        heads=(r"^projector\.", r"^momentum_", r"^predictor\.", r"^(backbone|encoder)\.fc\."),
        normalize="cifar10", small_stem="cifar-pad2",
        notes=("classifier.* is the online linear probe (trained on detached features).",)),
    CheckpointFormat(
        "lightly", "lightly examples (torchvision backbone as Sequential)",
        recognise=(r"^backbone\.4\.0\.conv1\.weight$",), prefixes=("backbone.",),
        renames=((r"^0\.", "stem.conv."), (r"^1\.", "stem.bn."), (r"^4\.", "layer1."), (r"^5\.", "layer2."),
                 (r"^6\.", "layer3."), (r"^7\.", "layer4."), (r"\.downsample\.", ".shortcut."),
                 (r"^online_classifier\.classification_head\.", "classifier.")),
        heads=(r"^projection_head", r"^prediction_head", r"momentum"), normalize="imagenet", split_bn=True),
    CheckpointFormat(
        "lightly-cifar", "lightly CIFAR benchmarks (ResNetGenerator as Sequential)",
        recognise=(r"^backbone\.0\.weight$", r"^backbone\.2\.0\.conv1\.weight$"), prefixes=("backbone.",),
        renames=((r"^0\.", "stem.conv."), (r"^1\.", "stem.bn."), (r"^2\.", "layer1."), (r"^3\.", "layer2."),
                 (r"^4\.", "layer3."), (r"^5\.", "layer4."),
                 (r"^online_classifier\.classification_head\.", "classifier.")),
        heads=(r"^projection_head", r"^prediction_head", r"momentum"), normalize="imagenet", split_bn=True,
        small_stem="cifar-norelu"),
    CheckpointFormat(
        "simclr-sthalles", "SimCLR (sthalles)",
        recognise=(r"^backbone\.conv1\.weight$", r"^backbone\.fc\.0\.weight$"), top_keys=("arch", "state_dict"),
        prefixes=("backbone.",), renames=TORCHVISION, heads=(r"^backbone\.fc\.",)),
    CheckpointFormat(
        "simclr-spijkervet", "SimCLR (Spijkervet)",
        recognise=(r"^(model\.)?encoder\.conv1\.weight$", r"^(model\.)?projector\.0\.weight$",
                   r"^(model\.)?encoder\.layer\d\.\d+\.downsample\.0\.weight$"),
        prefixes=("model.encoder.", "encoder."), renames=TORCHVISION,
        heads=(r"^(model\.)?projector\.", r"^(model\.)?encoder\.fc\.")),
    CheckpointFormat(
        "moco", "MoCo (reference) / MoCo v3",
        recognise=(r"^(encoder_q|base_encoder)\.conv1\.weight$",), prefixes=("encoder_q.", "base_encoder."),
        renames=TORCHVISION,
        heads=(r"^(encoder_q|base_encoder)\.(fc|head)\.", r"^(encoder_k|momentum_encoder)\.", r"^queue",
               r"^predictor\."),
        normalize="imagenet"),
    CheckpointFormat(
        "madry-robustness", "MadryLab robustness",
        recognise=(r"^attacker\.model\.", r"^normalizer\.new_mean$"), prefixes=("model.",),
        renames=KUANGLIU, heads=(r"^attacker\.",)),
    CheckpointFormat(
        "acl", "ACL (VITA-Group), dual BN",
        recognise=(r"\.bn_list\.1\.",), top_keys=("state_dict", "optim"), renames=ACL_NAMES,
        heads=(r"^fc\.",), bn_branches=_MULTI_BN, normalize="imagenet", robust_bn="adversarial",
        notes=("bn_list.0 is the clean BN, bn_list.1 the adversarial one; ACL evaluates robustness "
               "through the adversarial one.",)),
    CheckpointFormat(
        "advcl", "AdvCL, triple BN",
        recognise=(r"\.bn_list\.2\.",), top_keys=("model",), renames=ACL_NAMES,
        heads=(r"^head_(proj|pred|ce)", r"^fc_"), bn_branches=_MULTI_BN, robust_bn="adversarial",
        notes=("bn_list.0 clean, bn_list.1 PGD (loaded as adversarial BN), bn_list.2 PGD-CE (dropped); "
               "AdvCL evaluates robustness through the adversarial BN.",)),
    CheckpointFormat(
        "clae-simclr", "CLAE (SimCLR), dual BN",
        recognise=(r"_adv\.", r"^encoder\.conv1\.weight$"), prefixes=("encoder.",),
        renames=((r"\.shortcut_bn\.", ".shortcut.1."),) + KUANGLIU, heads=(r"^projector\.",),
        bn_branches=((r"_adv\.", ".", 1),), normalize="half"),
    CheckpointFormat(
        "clae-plain", "CLAE (Plain / UEL), dual BN",
        recognise=(r"_adv\.",), top_keys=("net",), prefixes=("encoder.",),
        renames=((r"\.shortcut_bn\.", ".shortcut.1."),) + KUANGLIU, heads=(r"^projector\.", r"^linear\."),
        bn_branches=((r"_adv\.", ".", 1),), normalize="cifar10-kuangliu",
        notes=("linear is the 128-d embedding layer, not a classifier, so it is dropped.",)),
    CheckpointFormat(
        "rocl", "RoCL",
        recognise=(r"^conv1\.weight$",), top_keys=("model", "optimizer_state", "rng_state"),
        renames=KUANGLIU, notes=("RoCL keeps its projector and linear head in separate files.",)),
    CheckpointFormat(
        "robustbench-wrn", "RobustBench / TRADES WideResNet",
        recognise=(r"^(model\.)?conv1\.weight$", r"^(model\.)?block\d\.layer\.\d+\.conv1\.weight$",
                   r"^(model\.)?bn1\.weight$"),
        prefixes=("model.",), renames=WRN_NAMES, heads=(r"^(model\.)?sub_block1\.",),
        notes=("sub_block1 (built by some entries, unused in forward) is dropped.",
               "raw RobustBench downloads hold no mu/sigma: entries whose class normalises need --normalize "
               "(cifar10: Rice2020Overfitting, Chen2020Efficient, Augustin2020Adversarial_34_10; "
               "half: Hendrycks2019Using).",
               "Pang2020Boosting's head takes cosines (normalised features and weights): its encoder loads "
               "exactly, its logits do not.",
               "DMWideResNet entries (init_conv, Swish; Gowal2020/2021, Rebuffi2021, Pang2022 ...) load as "
               "robustbench-dm-wrn.")),
    CheckpointFormat(
        "robustbench-dm-wrn", "RobustBench / DeepMind WideResNet (DMWideResNet)",
        recognise=(r"^(model\.)?init_conv\.weight$", r"^(model\.)?layer\.\d\.block\.\d+\.conv_0\.weight$"),
        prefixes=("model.",), renames=DM_WRN_NAMES, normalize="cifar10-dm", arch_prefix="dm-",
        notes=("Swish (SiLU) activations, stride-2 convs padded bottom/right only; ReLU-trained entries need "
               "--arch dm-wrn-D-K-relu (the file cannot tell).",
               "without mean/std buffers the input is normalised with DeepMind's CIFAR-10 constants; "
               "CIFAR-100 entries need --normalize cifar100.")),
    CheckpointFormat(
        "robustbench-dm-preact", "RobustBench / DeepMind PreActResNet (DMPreActResNet)",
        recognise=(r"^(model\.)?conv_2d\.weight$", r"^(model\.)?layer_\d\.\d+\.conv_2d_1\.weight$"),
        prefixes=("model.",), renames=DM_PREACT_NAMES, normalize="cifar10-dm", arch_prefix="dm-",
        notes=("Swish (SiLU) activations, 3x3 shortcuts from the raw input, stride-2 convs padded "
               "bottom/right only; ReLU-trained entries need --arch dm-preact-resnet18-relu (the file cannot tell).",
               "without mean/std buffers the input is normalised with DeepMind's CIFAR-10 constants; "
               "CIFAR-100 entries need --normalize cifar100.")),
    CheckpointFormat(
        "robustbench-preact", "RobustBench / locuslab PreActResNet-18",
        recognise=(r"^(model\.)?conv1\.weight$", r"^(model\.)?layer\d\.\d+\.shortcut\.0\.weight$"),
        reject=(r"^(model\.)?bn1\.",), prefixes=("model.",), renames=PREACT_NAMES,
        notes=("the file does not say where the shortcut branches: with a final bn it loads as preact-resnet18 "
               "(shortcut from the pre-activated input; Rice2020Overfitting L2), without as preact-resnet18-v1 "
               "(shortcut from the raw input, no final BN; Wong2020Fast, Andriushchenko2020Understanding); "
               "--arch overrides.",
               "raw RobustBench downloads hold no mu/sigma: Wong2020Fast and Rice2020Overfitting L2 need "
               "--normalize cifar10.")),
    CheckpointFormat(
        "robustbench", "RobustBench (ResNet entries)",
        recognise=(r"^(model\.)?conv1\.weight$", r"^(mu|sigma|normalize\.mean)$"), prefixes=("model.",),
        renames=TORCHVISION + KUANGLIU,
        notes=("ResNet-18/34/50 entries; WideResNet and PreActResNet-18 entries load as robustbench-wrn / "
               "robustbench-preact, DeepMind-style ones as robustbench-dm-wrn / robustbench-dm-preact.",)),
    CheckpointFormat(
        "kuangliu", "any kuangliu/pytorch-cifar style ResNet (generic)",
        recognise=(r"^conv1\.weight$", r"^layer\d\.\d+\.shortcut\.0\.weight$"), prefixes=("model.",),
        renames=KUANGLIU, notes=("generic layout: the input normalisation is unknown; check --normalize.",)),
    CheckpointFormat(
        "torchvision", "any torchvision style ResNet (generic)",
        recognise=(r"^conv1\.weight$", r"^layer\d\.\d+\.downsample\.0\.weight$"), prefixes=("model.",),
        renames=TORCHVISION, notes=("generic layout: the input normalisation is unknown; check --normalize.",)),
]


def register_format(fmt: CheckpointFormat, first: bool = True) -> None:
    """Add (or replace, by name) a checkpoint format.

    Args:
        fmt: the format's rules.
        first: put it before the built-in ones, so it wins ties in detection.
    """
    for i, known in enumerate(FORMATS):
        if known.name == fmt.name:
            FORMATS[i] = fmt
            return
    FORMATS.insert(0 if first else len(FORMATS), fmt)


def unregister_format(name: str) -> None:
    """Remove a format by name (no error if absent)."""
    FORMATS[:] = [f for f in FORMATS if f.name != name]


def get_format(name: str) -> CheckpointFormat:
    """The format called ``name``.

    Raises:
        ClrobustError: unknown name (the message lists the known ones).
    """
    for fmt in FORMATS:
        if fmt.name == name:
            return fmt
    raise ClrobustError(f"unknown checkpoint format {name!r}; known: {', '.join(f.name for f in FORMATS)}.")


def format_names() -> Sequence[str]:
    return [f.name for f in FORMATS]


#: (mean, std) of an input normalisation, or None for none.
Norm = Optional[Tuple[Tuple[float, ...], Tuple[float, ...]]]


def parse_normalize(spec: str) -> Norm:
    """A normalisation preset name or six numbers ``m1,m2,m3,s1,s2,s3`` -> (mean, std) or None.

    Raises:
        ClrobustError: unknown name, wrong count or a non-positive std.
    """
    text = spec.strip().lower()
    if text in NORMALIZATIONS:
        return NORMALIZATIONS[text]
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        values = []
    if len(values) != 6:
        raise ClrobustError(f"--normalize {spec!r} is neither a preset ({', '.join(NORMALIZATIONS)}) nor six "
                            "numbers 'm1,m2,m3,s1,s2,s3'.")
    if min(values[3:]) <= 0:
        raise ClrobustError(f"--normalize {spec!r}: the three std values must be positive.")
    return tuple(values[:3]), tuple(values[3:])
