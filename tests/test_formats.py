"""Third-party checkpoint loading: every supported layout loads to the network it was saved from.

Each case builds a reference network written the way that project writes it
(tests/reference_nets.py: kuangliu CIFAR ResNets, torchvision's own ResNet, lightly's
Sequential backbones, ACL's ``bn_list`` and CLAE's ``*_adv`` dual-BN nets -- never clrobust's
encoder), gives it random weights and batch-norm statistics, writes its state dict in the
project's checkpoint layout (key naming, wrappers, top-level keys, heads), saves it with
torch.save, loads it back through auto-detection and compares clrobust's pooled features
(``net.features``) with the reference's pooled features on the same images.
"""

from __future__ import annotations

import argparse
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import pytest
import torch
from torch import nn

from clrobust import checkpoints
from clrobust.checkpoints import CheckpointFormat
from clrobust.checkpoints.table import KUANGLIU
from clrobust.checkpoints.thirdparty import load_checkpoint
from clrobust.errors import ClrobustError
from tests.reference_nets import (
    ChannelNormalize,
    CifarResNet,
    ClaeResNet,
    MultiBNResNet,
    Norm,
    TorchvisionResNet,
    cifar_stem,
    lightly_backbone,
    lightly_cifar_backbone,
    randomized,
    robustbench_normalized,
    solo_learn_backbone,
)

pytestmark = pytest.mark.usefixtures("one_thread")

WIDTH = 4
CIFAR = ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616))
KUANGLIU_NORM = ((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010))
IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
HALF = ((0.5,) * 3, (0.5,) * 3)
ODD = ((0.3, 0.4, 0.5), (0.21, 0.22, 0.23))  # in-model buffers: values no preset has
OPT = {"state": {}, "param_groups": [{"lr": 0.1, "params": [0, 1]}]}

SD = Dict[str, torch.Tensor]
#: (network input, BN branch) -> pooled features of the reference network.
Forward = Callable[[torch.Tensor, int], torch.Tensor]


# ----------------------------------------------------------------------------- helpers

def normalise(x: torch.Tensor, norm: Optional[Norm]) -> torch.Tensor:
    if norm is None:
        return x
    return (x - torch.tensor(norm[0]).view(1, 3, 1, 1)) / torch.tensor(norm[1]).view(1, 3, 1, 1)


@dataclass
class Built:
    """A checkpoint in a third-party layout and the reference network it was written from."""

    ckpt: Dict[str, Any]
    norm: Optional[Norm]  # the normalisation the loader must report and apply (None: none)
    has_classifier: bool
    forward: Forward  # the reference's pooled features of its *network input* (after ``outside``)
    outside: Optional[Norm] = None  # normalisation the project applies to images before its network

    def features(self, images: torch.Tensor, adv: bool = False) -> torch.Tensor:
        """The reference's pooled features of images in [0, 1], as the project computes them."""
        with torch.no_grad():
            return self.forward(normalise(images, self.outside), int(adv))


def rename(sd: SD, rules: Sequence[Tuple[str, str]] = (), prefix: str = "") -> SD:
    """Reference naming -> a project's naming: regex ``rules`` in order, then ``prefix``."""
    out = {}
    for k, v in sd.items():
        for pat, rep in rules:
            k = re.sub(pat, rep, k)
        out[prefix + k] = v.clone()
    return out


def head(prefix: str, n_in: int, dims: Sequence[int] = (16, 8), idx: Sequence[int] = (0, 2),
         bias: bool = True) -> SD:
    """An MLP projection head ``prefix{idx}.weight/bias`` (random; the loader drops it)."""
    out, n = {}, n_in
    for i, o in zip(idx, dims):
        out[f"{prefix}{i}.weight"] = torch.randn(o, n)
        if bias:
            out[f"{prefix}{i}.bias"] = torch.randn(o)
        n = o
    return out


def linear(prefix: str, n_in: int, n_out: int = 10) -> SD:
    return {f"{prefix}weight": torch.randn(n_out, n_in), f"{prefix}bias": torch.randn(n_out)}


def kuangliu(arch: str = "resnet18", num_classes: Optional[int] = None, seed: int = 0) -> Tuple[CifarResNet, SD]:
    return randomized(CifarResNet.named(arch, WIDTH, num_classes=num_classes), seed)


def torchvision_net(arch: str = "resnet18", seed: int = 0) -> Tuple[TorchvisionResNet, SD]:
    return randomized(TorchvisionResNet(arch, WIDTH), seed)


def single(net: nn.Module) -> Forward:
    return lambda x, branch: net.features(x)


# ----------------------------------------------------------------------------- layouts
# Each builder writes one project's checkpoint from a reference network's state dict.

def _supcontrast(arch: str = "resnet18", prefix: str = "encoder.") -> Built:
    """SupConResNet: ``encoder`` (resnet_big, kuangliu names) + ``head`` MLP; argparse ``opt``."""
    net, sd = kuangliu(arch)
    model = {**rename(sd, prefix=prefix), **head("head.", net.feature_dim)}
    ckpt = {"opt": argparse.Namespace(model=arch, lr=0.05), "model": model, "optimizer": OPT, "epoch": 100}
    return Built(ckpt, KUANGLIU_NORM, False, single(net), KUANGLIU_NORM)


def _supcontrast_multigpu() -> Built:
    return _supcontrast(prefix="encoder.module.")


def _supce() -> Built:
    """SupCEResNet under DataParallel: ``module.encoder`` + ``module.fc``."""
    net, sd = kuangliu("resnet34")
    model = {**rename(sd, prefix="module.encoder."), **linear("module.fc.", net.feature_dim)}
    ckpt = {"opt": argparse.Namespace(), "model": model, "optimizer": OPT, "epoch": 1}
    return Built(ckpt, KUANGLIU_NORM, True, single(net), KUANGLIU_NORM)


def _solo() -> Built:
    """solo-learn Lightning checkpoint: ``backbone``, ``momentum_backbone`` (other weights), projector, probe."""
    net, sd = randomized(solo_learn_backbone("resnet18", WIDTH))
    _, momentum = randomized(solo_learn_backbone("resnet18", WIDTH), seed=1)
    proj = {**head("projector.", net.feature_dim), "projector.1.running_mean": torch.zeros(16),
            "projector.1.weight": torch.ones(16)}
    state = {**rename(sd, prefix="backbone."), **rename(momentum, prefix="momentum_backbone."), **proj,
             **linear("classifier.", net.feature_dim)}
    ckpt = {"epoch": 3, "global_step": 30, "pytorch-lightning_version": "2.1.0", "state_dict": state}
    return Built(ckpt, CIFAR, True, single(net), CIFAR)


def _deacl() -> Built:
    """DeACL: solo-learn backbone built from ``resnet_add_normalize`` (``normalize.mean/std`` of shape (3,))."""
    net, sd = randomized(solo_learn_backbone("resnet18", WIDTH, normalize=ChannelNormalize(*ODD)))
    proj = {**head("projector.", net.feature_dim), "projector.1.running_mean": torch.zeros(16)}
    state = {**rename(sd, prefix="backbone."), **proj, **linear("classifier.", net.feature_dim)}
    return Built({"epoch": 1, "state_dict": state}, ODD, True, single(net))


def _lightly() -> Built:
    """lightly example: ``backbone`` = Sequential of torchvision children (SplitBatchNorm, saved in train mode)."""
    backbone, sd = randomized(lightly_backbone("resnet18", WIDTH, num_splits=2))
    n = 8 * WIDTH
    state = {**rename(sd, prefix="backbone."), **head("projection_head.layers.", n),
             **linear("online_classifier.classification_head.", n)}
    return Built({"epoch": 2, "state_dict": state}, IMAGENET, True, lambda x, b: backbone(x).flatten(1), IMAGENET)


def _lightly_cifar() -> Built:
    """lightly CIFAR benchmark: ``backbone`` = Sequential(ResNetGenerator children but linear, avgpool)."""
    backbone, sd = randomized(lightly_cifar_backbone("resnet18", WIDTH, num_splits=4))
    state = {**rename(sd, prefix="backbone."), **head("projection_head.layers.", 8 * WIDTH)}
    return Built({"epoch": 2, "state_dict": state}, IMAGENET, False, lambda x, b: backbone(x).flatten(1), IMAGENET)


def _sthalles() -> Built:
    """sthalles/SimCLR: torchvision ``backbone`` whose ``fc`` became Sequential(Linear, ReLU, Linear)."""
    net, sd = torchvision_net()
    state = {**rename(sd, prefix="backbone."), **head("backbone.fc.", net.feature_dim)}
    return Built({"epoch": 100, "arch": "resnet18", "state_dict": state, "optimizer": OPT}, None, False, single(net))


def _spijkervet() -> Built:
    """Spijkervet/SimCLR: bare state dict, torchvision ``encoder`` (fc = Identity), bias-free ``projector``."""
    net, sd = torchvision_net()
    return Built({**rename(sd, prefix="encoder."), **head("projector.", net.feature_dim, bias=False)}, None, False,
                 single(net))


def _spijkervet_lightning() -> Built:
    net, sd = torchvision_net()
    state = {**rename(sd, prefix="encoder."), **rename(sd, prefix="model.encoder."),
             **head("model.projector.", net.feature_dim, bias=False)}
    return Built({"epoch": 1, "state_dict": state}, None, False, single(net))


def _moco() -> Built:
    """MoCo v2 under DataParallel: ``encoder_q`` (MLP in fc), ``encoder_k`` (other weights), queue."""
    net, q = torchvision_net("resnet50")
    _, k = torchvision_net("resnet50", seed=1)
    extra = {**head("module.encoder_q.fc.", net.feature_dim), "module.queue": torch.randn(8, 64),
             "module.queue_ptr": torch.zeros(1, dtype=torch.long)}
    state = {**rename(q, prefix="module.encoder_q."), **rename(k, prefix="module.encoder_k."), **extra}
    return Built({"epoch": 200, "arch": "resnet50", "state_dict": state, "optimizer": OPT}, IMAGENET, False,
                 single(net), IMAGENET)


def _robustbench() -> Built:
    """RobustBench ``normalize_model``: Sequential(normalize=ImageNormalizer, model=kuangliu ResNet with linear)."""
    model = CifarResNet.named("resnet18", WIDTH, num_classes=10)
    net, sd = randomized(robustbench_normalized(model, ODD))
    return Built(dict(sd), ODD, True, lambda x, b: model.features(net.normalize(x)))


def _robustbench_mu() -> Built:
    """A RobustBench entry built on a CIFAR-adapted torchvision ResNet with ``mu``/``sigma`` buffers."""
    net, sd = randomized(cifar_stem(TorchvisionResNet("resnet18", WIDTH, mu_sigma=ODD)))
    return Built({"state_dict": {**rename(sd, prefix="module."), **linear("module.fc.", net.feature_dim)}}, ODD,
                 True, single(net))


def _madry() -> Built:
    """MadryLab robustness AttackerModel under DataParallel: ``model``, ``attacker.model`` and both normalizers."""
    net, sd = kuangliu(num_classes=10)
    norm = {}
    for p in ("module.normalizer.", "module.attacker.normalizer."):
        norm[p + "new_mean"] = torch.tensor(ODD[0]).view(3, 1, 1)
        norm[p + "new_std"] = torch.tensor(ODD[1]).view(3, 1, 1)
    model = {**rename(sd, prefix="module.model."), **rename(sd, prefix="module.attacker.model."), **norm}
    # InputNormalize clamps to [0, 1], then normalises: the images already are in [0, 1]
    return Built({"model": model, "optimizer": OPT, "schedule": None, "epoch": 150}, ODD, True,
                 lambda x, b: net.features(normalise(x, ODD)))


def _rocl() -> Built:
    net, sd = kuangliu()
    return Built({"epoch": 1, "acc": 0.5, "model": rename(sd, prefix="module."), "optimizer_state": OPT,
                  "rng_state": torch.zeros(8, dtype=torch.uint8)}, None, False, single(net))


def _multi_bn(net: MultiBNResNet) -> Forward:
    return lambda x, branch: net.features(x, branch)


def _acl() -> Built:
    """ACL: resnet_multi_bn with bn_list.0 (normal) / bn_list.1 (pgd), ImageNet ``normalize`` inside, proj_head fc."""
    net, sd = randomized(MultiBNResNet(WIDTH, branches=2, normalize=IMAGENET))
    n = net.feature_dim
    proj = {"fc.fc1.weight": torch.randn(n, n), "fc.fc1.bias": torch.randn(n), "fc.fc2.weight": torch.randn(n, n)}
    for i in (1, 2):
        for b in (0, 1):
            proj[f"fc.bn{i}.bn_list.{b}.weight"] = torch.ones(n)
            proj[f"fc.bn{i}.bn_list.{b}.running_mean"] = torch.zeros(n)
    return Built({"epoch": 10, "state_dict": {**sd, **proj}, "optim": OPT}, IMAGENET, False, _multi_bn(net))


def _advcl() -> Built:
    """AdvCL under DataParallel: bn_list.0/1/2 (normal / pgd / pgd_ce), head_proj / head_pred MLPs."""
    net, sd = randomized(MultiBNResNet(WIDTH, branches=3))
    n = net.feature_dim
    heads = {**head("module.head_proj.", n, idx=(0, 3)), **head("module.head_pred.", 16, idx=(0, 3)),
             "module.head_proj.1.running_mean": torch.zeros(16)}
    model = {**rename(sd, prefix="module."), **heads}
    return Built({"model": model, "epoch": 5, "rng_state": torch.zeros(4, dtype=torch.uint8)}, None, False,
                 _multi_bn(net))


def _clae(net: ClaeResNet) -> Forward:
    return lambda x, branch: net.features(x, adv=bool(branch))


def _clae_simclr() -> Built:
    """CLAE SimCLR_BN: bare state dict, ``encoder`` (bn*_adv copies, fc = Identity), ``projector``."""
    net, sd = randomized(ClaeResNet(WIDTH))
    return Built({**rename(sd, prefix="encoder."), **head("projector.", net.feature_dim)}, HALF, False, _clae(net),
                 HALF)


def _clae_plain() -> Built:
    """CLAE Plain/UEL: ``{'net', 'acc', 'epoch'}``, the encoder at top level plus its 128-d ``linear`` embedding."""
    net, sd = randomized(ClaeResNet(WIDTH))
    state = {**rename(sd), **linear("linear.", net.feature_dim, 128)}
    return Built({"net": state, "acc": 0.1, "epoch": 3}, KUANGLIU_NORM, False, _clae(net), KUANGLIU_NORM)


def _clnet() -> Built:
    """CL-Robustness CLNet: SupContrast ResNet-50 under ``encoder.encoder``, ``head`` MLP."""
    net, sd = kuangliu("resnet50")
    return Built({**rename(sd, prefix="encoder.encoder."), **head("head.", net.feature_dim)}, None, False,
                 single(net))


def _evalnet() -> Built:
    """CL-Robustness EvalNet: the encoder plus a linear probe ``head``."""
    net, sd = kuangliu()
    return Built({**rename(sd, prefix="encoder.encoder."), **linear("head.", net.feature_dim)}, None, True,
                 single(net))


def _kuangliu_safetensors() -> Built:
    net, sd = kuangliu(num_classes=10)
    return Built(dict(sd), None, True, single(net))


# (name, expected format, arch, stem, dual BN, builder)
Case = Tuple[str, str, str, str, bool, Callable[[], Built]]

CASES: List[Case] = [
    ("supcontrast", "supcontrast", "resnet18", "cifar", False, _supcontrast),
    ("supcontrast-multigpu", "supcontrast", "resnet18", "cifar", False, _supcontrast_multigpu),
    ("supce", "supcontrast", "resnet34", "cifar", False, _supce),
    ("solo-learn", "solo-learn", "resnet18", "cifar-pad2", False, _solo),
    ("deacl", "deacl", "resnet18", "cifar-pad2", False, _deacl),
    ("lightly", "lightly", "resnet18", "imagenet", False, _lightly),
    ("lightly-cifar", "lightly-cifar", "resnet18", "cifar-norelu", False, _lightly_cifar),
    ("simclr-sthalles", "simclr-sthalles", "resnet18", "imagenet", False, _sthalles),
    ("simclr-spijkervet", "simclr-spijkervet", "resnet18", "imagenet", False, _spijkervet),
    ("simclr-spijkervet-lightning", "simclr-spijkervet", "resnet18", "imagenet", False, _spijkervet_lightning),
    ("moco", "moco", "resnet50", "imagenet", False, _moco),
    ("robustbench", "robustbench", "resnet18", "cifar", False, _robustbench),
    ("robustbench-mu", "robustbench", "resnet18", "cifar", False, _robustbench_mu),
    ("madry", "madry-robustness", "resnet18", "cifar", False, _madry),
    ("rocl", "rocl", "resnet18", "cifar", False, _rocl),
    ("acl", "acl", "resnet18", "cifar", True, _acl),
    ("advcl", "advcl", "resnet18", "cifar", True, _advcl),
    ("clae-simclr", "clae-simclr", "resnet18", "cifar", True, _clae_simclr),
    ("clae-plain", "clae-plain", "resnet18", "cifar", True, _clae_plain),
    ("cl-robustness-clnet", "cl-robustness", "resnet50", "cifar", False, _clnet),
    ("cl-robustness-evalnet", "cl-robustness", "resnet18", "cifar", False, _evalnet),
    ("kuangliu-safetensors", "kuangliu", "resnet18", "cifar", False, _kuangliu_safetensors),
]

FILENAMES = {"rocl": "ckpt.t7ResNet18_0", "solo-learn": "solo.ckpt", "simclr-sthalles": "checkpoint_0100.pth.tar",
             "kuangliu-safetensors": "model.safetensors"}



@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(1))


def _save(obj, path: Path) -> Path:
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in obj.items()}, str(path))
    else:
        torch.save(obj, path)
    return path


def close(got: torch.Tensor, want: torch.Tensor) -> None:
    assert want.std() > 0.1, "degenerate reference features"
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_format_roundtrip(case: Case, tmp_path: Path, images: torch.Tensor) -> None:
    name, fmt, arch, stem, dual, build = case
    built = build()
    path = _save(built.ckpt, tmp_path / FILENAMES.get(name, f"{name}.pt"))

    net, report = load_checkpoint(path)

    assert report.format == fmt
    assert (report.arch, report.stem, report.width, report.dual_bn) == (arch, stem, WIDTH, dual)
    assert report.missing == []
    assert report.has_classifier == built.has_classifier
    expected_norm = None if built.norm is None else list(built.norm[0]) + list(built.norm[1])
    got_norm = None if report.normalize["mean"] is None else report.normalize["mean"] + report.normalize["std"]
    if expected_norm is None:
        assert got_norm is None
    else:
        assert got_norm == pytest.approx(expected_norm, abs=1e-6)
    assert net.projector is None
    if built.has_classifier:
        flat = _flat(built.ckpt)
        cls_key = next(k for k in flat if re.search(r"(linear|fc|classifier|head|classification_head)\.weight$", k))
        torch.testing.assert_close(net.classifier.weight, flat[cls_key])
    # Dual-BN networks are evaluated through the branch their authors evaluate robustness with.
    assert report.adversarial_bn == (fmt in ("acl", "advcl"))
    with torch.no_grad():
        got = net.features(images)
    want = built.features(images, adv=True) if report.adversarial_bn else built.features(images)
    close(got, want)


def _flat(ckpt) -> SD:
    for key in ("state_dict", "model", "net"):
        if isinstance(ckpt.get(key), dict):
            return ckpt[key]
    return ckpt


def test_heads_are_dropped_and_reported(tmp_path: Path) -> None:
    _, report = load_checkpoint(_save(_supcontrast().ckpt, tmp_path / "last.pth"))
    assert sorted(report.dropped) == ["head.0.bias", "head.0.weight", "head.2.bias", "head.2.weight"]
    assert report.unexpected == []
    _, report = load_checkpoint(_save(_moco().ckpt, tmp_path / "moco.pt"))
    assert "queue" in report.dropped and any(k.startswith("encoder_k.") for k in report.dropped)


@pytest.mark.parametrize("builder,default", [(_acl, "adversarial"), (_clae_simclr, "clean"),
                                             (_advcl, "adversarial")], ids=["acl", "clae", "advcl"])
def test_dual_bn_authors_branch_by_default_either_on_request(builder: Callable[[], Built], default: str,
                                                             tmp_path: Path, images: torch.Tensor) -> None:
    built = builder()
    path = _save(built.ckpt, tmp_path / "dual.pt")
    _, auto = load_checkpoint(path)
    assert auto.adversarial_bn == (default == "adversarial")
    assert any(f"through the {default} batch norm" in n and "authors" in n for n in auto.notes)
    clean, chosen = load_checkpoint(path, adversarial_bn=False)
    assert not chosen.adversarial_bn and any("chosen by the user" in n for n in chosen.notes)
    adv, report = load_checkpoint(path, adversarial_bn=True)
    assert report.adversarial_bn
    with torch.no_grad():
        f_clean, f_adv = clean.features(images), adv.features(images)
    close(f_clean, built.features(images, adv=False))
    close(f_adv, built.features(images, adv=True))
    assert (f_clean - f_adv).abs().max() > 1e-3


def test_adversarial_bn_on_single_bn_checkpoint_is_an_error(tmp_path: Path) -> None:
    path = _save(_supcontrast().ckpt, tmp_path / "last.pth")
    with pytest.raises(ClrobustError, match="no adversarial batch-norm"):
        load_checkpoint(path, adversarial_bn=True)


def test_unknown_layout_lists_closest_formats(tmp_path: Path) -> None:
    sd = {"features.0.weight": torch.randn(4, 3, 3, 3), "features.1.weight": torch.randn(4),
          "classifier.1.weight": torch.randn(10, 4)}
    path = _save({"state_dict": sd}, tmp_path / "vgg.pt")
    with pytest.raises(ClrobustError, match="closest known formats: .+%") as info:
        load_checkpoint(path)
    assert "\n" not in str(info.value) and "register_format" in str(info.value)
    # a near miss (SupContrast layout without its 'opt') names supcontrast among the closest
    _, ref = kuangliu()
    sd = rename(ref, [(r"^conv1\.", "first_conv.")], "encoder.")
    with pytest.raises(ClrobustError, match="supcontrast"):
        load_checkpoint(_save({"model": sd}, tmp_path / "near.pt"))


def test_missing_encoder_weights_refused_unless_not_strict(tmp_path: Path) -> None:
    ckpt = _supcontrast().ckpt
    del ckpt["model"]["encoder.layer3.0.conv2.weight"]
    path = _save(ckpt, tmp_path / "partial.pth")
    with pytest.raises(ClrobustError, match=r"missing.*layer3\.0\.conv2\.weight.*--allow-missing"):
        load_checkpoint(path)
    _, report = load_checkpoint(path, strict=False)
    assert report.missing == ["layer3.0.conv2.weight"]


def test_overrides_normalize_arch_and_format(tmp_path: Path, images: torch.Tensor) -> None:
    built = _supcontrast()
    path = _save(built.ckpt, tmp_path / "last.pth")
    net, report = load_checkpoint(path, normalize="none", arch="resnet18", format="supcontrast")
    assert report.normalize["mean"] is None and report.normalize["origin"].startswith("user")
    with torch.no_grad():
        close(net.features(images), built.forward(images, 0))
    net, _ = load_checkpoint(path, normalize="0.1,0.2,0.3,0.4,0.5,0.6")
    assert net.normalize.std.flatten().tolist() == pytest.approx([0.4, 0.5, 0.6])
    with pytest.raises(ClrobustError, match="preset"):
        load_checkpoint(path, normalize="cifar11")
    with pytest.raises(ClrobustError, match="do not fit"):
        load_checkpoint(path, arch="resnet50")


def test_register_format_extends_detection(tmp_path: Path, images: torch.Tensor) -> None:
    ref, ref_sd = kuangliu()
    sd = {**rename(ref_sd, prefix="net."), **head("net.proj.", ref.feature_dim)}
    path = _save({"weights": sd, "epoch": 1}, tmp_path / "mine.pt")
    with pytest.raises(ClrobustError):
        load_checkpoint(path)
    checkpoints.register_format(CheckpointFormat(
        name="my-lab", source="test lab", recognise=(r"^net\.conv1\.weight$", r"^net\.proj\."),
        prefixes=("net.",), heads=(r"^net\.proj\.",), renames=KUANGLIU, normalize="cifar10"))
    try:
        net, report = load_checkpoint(_save(sd, tmp_path / "mine_flat.pt"))
        assert report.format == "my-lab" and len(report.dropped) == 4
        with torch.no_grad():
            close(net.features(images), ref.features(normalise(images, CIFAR)))
    finally:
        checkpoints.unregister_format("my-lab")


class _Evil:
    def __init__(self, target: str):
        self.target = target

    def __reduce__(self):
        return (open, (self.target, "w"))


def test_malicious_pickle_is_refused_by_the_cli(tmp_path: Path, capsys) -> None:
    from clrobust.cli import main

    target = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save({"model": {"conv1.weight": torch.zeros(1)}, "payload": _Evil(str(target))}, path)
    with pytest.raises(SystemExit) as info:
        main(["inspect", str(path)])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "--trust-checkpoint" in err and "open" in err and len(err.strip().splitlines()) == 1
    assert not target.exists()


def test_raw_pickle_and_corrupt_files_are_one_line_errors(tmp_path: Path) -> None:
    import pickle

    target = tmp_path / "pwned"
    raw = tmp_path / "raw.pt"
    raw.write_bytes(pickle.dumps({"x": _Evil(str(target))}, protocol=2))
    html = tmp_path / "page.pth"
    html.write_text("<!DOCTYPE html>\n<html><body>Sign in</body></html>")
    good = _save(_supcontrast().ckpt, tmp_path / "good.pth")
    trunc = tmp_path / "trunc.pth"
    trunc.write_bytes(good.read_bytes()[:2000])
    for path, pattern in [(raw, "trust-checkpoint"), (html, "HTML page"), (trunc, "corrupt")]:
        with pytest.raises(ClrobustError, match=pattern) as info:
            load_checkpoint(path)
        assert "\n" not in str(info.value)
    assert not target.exists()


def test_trust_allows_full_unpickling(tmp_path: Path) -> None:
    ckpt = _rocl().ckpt
    ckpt["extra"] = torch.nn.Identity()  # a pickled module: refused without trust
    path = _save(ckpt, tmp_path / "rocl.t7")
    with pytest.raises(ClrobustError, match="torch.nn.modules.linear.Identity"):
        load_checkpoint(path)
    _, report = load_checkpoint(path, trust=True)
    assert report.format == "rocl"


def test_inspect_and_convert_cli(tmp_path: Path, images: torch.Tensor) -> None:
    import json

    from click.testing import CliRunner

    from clrobust.checkpoints import load as load_model
    from clrobust.cli import cli

    built = _supcontrast()
    path = _save(built.ckpt, tmp_path / "last.pth")
    runner = CliRunner()
    res = runner.invoke(cli, ["inspect", str(path), "--json"])
    assert res.exit_code == 0, res.output
    info = json.loads(res.output)
    assert info["format"] == "supcontrast" and info["layers"]["blocks"][0] == "stem"
    assert "layer4.1.bn2" in info["layers"]["all"]
    res = runner.invoke(cli, ["inspect", str(path)])
    assert res.exit_code == 0 and "supcontrast" in res.output and "head.0.weight" in res.output
    out = tmp_path / "converted"
    res = runner.invoke(cli, ["convert", str(path), str(out)])
    assert res.exit_code == 0, res.output
    loaded = load_model(str(out) + ".safetensors")
    assert loaded.metadata["source_format"] == "supcontrast"
    want = built.features(images)
    close(loaded.network.features(images).detach(), want)
    direct = load_model(str(path))  # non-native files go through load_checkpoint
    close(direct.network.features(images).detach(), want)
    assert direct.metadata["source_format"] == "supcontrast"


def test_convert_keeps_both_batch_norms(tmp_path: Path, images: torch.Tensor) -> None:
    from clrobust.checkpoints import load as load_model
    from clrobust.cli import main

    built = _clae_simclr()
    path = _save(built.ckpt, tmp_path / "clae_epoch_1.pt")
    main(["convert", str(path), str(tmp_path / "clae")])
    adv = load_model(str(tmp_path / "clae.safetensors"), adversarial_bn=True)
    close(adv.network.features(images).detach(), built.features(images, adv=True))
    clean = load_model(str(tmp_path / "clae.safetensors"))  # CLAE's authors evaluate the clean BN
    assert not clean.report.adversarial_bn
    close(clean.network.features(images).detach(), built.features(images))
    # ACL's default branch (adversarial) survives convert, and --bn overrides it there too.
    acl = _acl()
    main(["convert", str(_save(acl.ckpt, tmp_path / "acl.pt")), str(tmp_path / "acl")])
    converted = load_model(str(tmp_path / "acl.safetensors"))
    assert converted.report.adversarial_bn and converted.source_format == "acl"
    close(converted.network.features(images).detach(), acl.features(images, adv=True))
    main(["convert", str(tmp_path / "acl.pt"), str(tmp_path / "acl-clean"), "--bn", "clean"])
    close(load_model(str(tmp_path / "acl-clean.safetensors")).network.features(images).detach(), acl.features(images))


def test_inspect_groups_dropped_keys_under_their_shared_prefix():
    from clrobust.cli.checkpoints import _grouped

    keys = [f"model.sub_block1.layer.{i}.bn1.weight" for i in range(5)] + ["fc.weight", "fc.bias"]
    assert _grouped(keys) == ["model.sub_block1.layer.* (5 keys)", "fc.weight", "fc.bias"]
    heads = [f"projector.{i}.weight" for i in range(3)] + ["projector.bn.running_mean", "projector.bn.bias"]
    assert _grouped(heads) == ["projector.* (5 keys)"]


@pytest.mark.slow
def test_half_storage_halves_the_file_and_keeps_the_accuracies(tmp_path: Path, trained_checkpoint) -> None:
    """convert --half: float16 on disk, float32 in memory (every weight the float16 rounding of the original),
    and the trained model's clean accuracy on 256 test images unchanged, its PGD accuracy within 2 of 256 images
    (the rounding may tip an image on the attack's edge: one of 256 on some CPUs)."""
    from clrobust.attacks import AttackSpec
    from clrobust.checkpoints import load
    from clrobust.cli import main
    from clrobust.data import load_dataset
    from clrobust.robustness import accuracy

    main(["convert", str(trained_checkpoint), str(tmp_path / "half"), "--half"])
    full, half = load(str(trained_checkpoint)), load(str(tmp_path / "half.safetensors"))
    assert (tmp_path / "half.safetensors").stat().st_size < 0.55 * trained_checkpoint.stat().st_size
    assert half.metadata["storage"] == "float16"
    # the training record and metrics travel with the weights: the zoo's manifest is read from them
    for key in ("training", "metrics", "versions"):
        assert half.metadata[key] == full.metadata[key], key
    from clrobust.checkpoints import zoo

    (entry,) = zoo.rebuild_manifest(tmp_path)["models"]
    assert (entry["scheme"], entry["epochs"], entry["clean_accuracy"]) == (
        "supervised", full.metadata["training"]["epochs"], full.metadata["metrics"]["clean_accuracy"])
    for (k, a), b in zip(full.network.state_dict().items(), half.network.state_dict().values()):
        assert b.dtype == a.dtype, k
        if a.is_floating_point():
            assert torch.equal(b, a.half().float()), k
    data = load_dataset("cifar10-mini", "test").subset(256)
    spec = AttackSpec("pgd", 2 / 255, 5)
    h, f = accuracy(half.network, data, spec), accuracy(full.network, data, spec)
    assert (h["n"], h["clean"]) == (f["n"], f["clean"]) and 0 < f["adversarial"] < f["clean"]
    assert abs(h["adversarial"] - f["adversarial"]) <= 2 / 256, (h, f)


def test_loading_on_a_cpu_gives_channels_last_weights_with_the_float64_outputs(tmp_path: Path) -> None:
    """The load door puts convolutions in channels-last memory on a CPU (oneDNN's fast kernels); the logits
    still equal a float64 NCHW copy of the saved network's, and saving the loaded network again keeps every
    value (the file holds contiguous tensors)."""
    import copy

    from clrobust.checkpoints import load, save_network
    from clrobust.models import ModelConfig, create_model

    torch.manual_seed(0)
    net = create_model(ModelConfig(arch="resnet18", width=16, num_classes=10))
    with torch.no_grad():  # batch norm that is not the identity in eval mode
        for m in net.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 2.0)
    save_network(tmp_path / "m", net)
    loaded = load(str(tmp_path / "m.safetensors")).network
    convs = [m for m in loaded.modules() if isinstance(m, nn.Conv2d)]
    assert convs and all(c.weight.is_contiguous(memory_format=torch.channels_last) for c in convs)
    assert not all(c.weight.is_contiguous() for c in convs)
    ref = copy.deepcopy(net).double().eval()
    x = torch.rand(6, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        out, want = loaded(x).double(), ref(x.double())
    assert torch.allclose(out, want, rtol=0, atol=1e-4 * float(want.abs().max())), (out - want).abs().max()
    save_network(tmp_path / "again", loaded)
    again = load(str(tmp_path / "again.safetensors")).network
    for (k, a), b in zip(net.state_dict().items(), again.state_dict().values()):
        assert torch.equal(a, b), k
