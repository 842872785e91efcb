"""RobustBench WideResNet and PreActResNet-18 checkpoints: detection, inference, exact forward, hooks.

Two independent checks per layout: (1) a state dict written directly in
RobustBench's key naming is loaded by auto-detection and its logits are compared
with a reference forward written here with torch.nn.functional, following the
RobustBench model code; (2) a clrobust network exported to that naming through a
mapping written here loads back with the same logits.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import List, Optional, Tuple

import pytest
import torch
import torch.nn.functional as F

from clrobust.checkpoints.thirdparty import load_checkpoint
from clrobust.errors import ClrobustError
from clrobust.hooks import layer_names, record
from clrobust.models import ModelConfig, adversarial_bn, create_model, has_dual_bn
from tests.thirdparty_nets import SD, bn_eval, close, logits, rand_bn, rand_conv

pytestmark = pytest.mark.usefixtures("one_thread")
ODD = ((0.3, 0.4, 0.5), (0.21, 0.22, 0.23))


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))


# ----------------------------------------------------------------------------- RobustBench-named state dicts

def rb_wrn_state(depth: int, widen: int, seed: int = 0, sub_block1: bool = False) -> SD:
    """RobustBench ``WideResNet(depth, widen_factor=widen)`` keys and shapes, random values."""
    g = torch.Generator().manual_seed(seed)
    n = (depth - 4) // 6
    ch = [16, 16 * widen, 32 * widen, 64 * widen]
    sd: SD = {}
    rand_conv(sd, "conv1", ch[0], 3, 3, g)
    groups = [("block1", ch[0], ch[1]), ("block2", ch[1], ch[2]), ("block3", ch[2], ch[3])]
    if sub_block1:
        groups.append(("sub_block1", ch[0], ch[1]))
    for name, cin, cout in groups:
        for j in range(n):
            p, i = f"{name}.layer.{j}", cin if j == 0 else cout
            rand_bn(sd, f"{p}.bn1", i, g)
            rand_conv(sd, f"{p}.conv1", cout, i, 3, g)
            rand_bn(sd, f"{p}.bn2", cout, g)
            rand_conv(sd, f"{p}.conv2", cout, cout, 3, g)
            if i != cout:
                rand_conv(sd, f"{p}.convShortcut", cout, i, 1, g)
    rand_bn(sd, "bn1", ch[3], g)
    sd["fc.weight"] = 0.1 * torch.randn(10, ch[3], generator=g)
    sd["fc.bias"] = 0.1 * torch.randn(10, generator=g)
    return sd


def rb_preact_state(width: int, final_bn: bool, seed: int = 0) -> SD:
    """RobustBench ``PreActResNet(block, [2, 2, 2, 2])`` keys (base width ``width``), random values."""
    g = torch.Generator().manual_seed(seed)
    sd: SD = {}
    rand_conv(sd, "conv1", width, 3, 3, g)
    cin = width
    for s in range(4):
        planes = width * 2 ** s
        for j in range(2):
            p, stride = f"layer{s + 1}.{j}", 2 if (s > 0 and j == 0) else 1
            rand_bn(sd, f"{p}.bn1", cin, g)
            rand_conv(sd, f"{p}.conv1", planes, cin, 3, g)
            rand_bn(sd, f"{p}.bn2", planes, g)
            rand_conv(sd, f"{p}.conv2", planes, planes, 3, g)
            if stride != 1 or cin != planes:
                rand_conv(sd, f"{p}.shortcut.0", planes, cin, 1, g)
            cin = planes
    if final_bn:
        rand_bn(sd, "bn", cin, g)
    sd["linear.weight"] = 0.1 * torch.randn(10, cin, generator=g)
    sd["linear.bias"] = 0.1 * torch.randn(10, generator=g)
    return sd


def with_norm(sd: SD, norm=ODD, prefix: str = "") -> SD:
    out = {prefix + k: v for k, v in sd.items()}
    if norm is not None:
        out[prefix + "mu"] = torch.tensor(norm[0]).view(1, 3, 1, 1)
        out[prefix + "sigma"] = torch.tensor(norm[1]).view(1, 3, 1, 1)
    return out


# ----------------------------------------------------------------------------- reference forwards

def reference_wrn(sd: SD, x: torch.Tensor, norm=None) -> torch.Tensor:
    """RobustBench's WideResNet forward: BasicBlock with equalInOut / convShortcut."""
    if norm is not None:
        x = (x - torch.tensor(norm[0]).view(1, 3, 1, 1)) / torch.tensor(norm[1]).view(1, 3, 1, 1)
    out = F.conv2d(x, sd["conv1.weight"], padding=1)
    for b in (1, 2, 3):
        j = 0
        while f"block{b}.layer.{j}.conv1.weight" in sd:
            p = f"block{b}.layer.{j}"
            stride = 2 if (b > 1 and j == 0) else 1
            equal_in_out = f"{p}.convShortcut.weight" not in sd
            if equal_in_out:
                h = F.relu(bn_eval(sd, f"{p}.bn1", out))
                residual = out
            else:  # the input itself is replaced by its activation, which also feeds the shortcut
                out = F.relu(bn_eval(sd, f"{p}.bn1", out))
                h = out
                residual = F.conv2d(out, sd[f"{p}.convShortcut.weight"], stride=stride)
            h = F.conv2d(h, sd[f"{p}.conv1.weight"], stride=stride, padding=1)
            h = F.conv2d(F.relu(bn_eval(sd, f"{p}.bn2", h)), sd[f"{p}.conv2.weight"], padding=1)
            out = residual + h
            j += 1
    out = F.relu(bn_eval(sd, "bn1", out))
    out = F.avg_pool2d(out, 8).flatten(1)
    return F.linear(out, sd["fc.weight"], sd["fc.bias"])


def reference_preact(sd: SD, x: torch.Tensor, raw_shortcut: bool, norm=None) -> torch.Tensor:
    """RobustBench's PreActResNet forward (PreActBlock: raw_shortcut; PreActBlockV2: not)."""
    if norm is not None:
        x = (x - torch.tensor(norm[0]).view(1, 3, 1, 1)) / torch.tensor(norm[1]).view(1, 3, 1, 1)
    out = F.conv2d(x, sd["conv1.weight"], padding=1)
    for s in range(1, 5):
        for j in range(2):
            p = f"layer{s}.{j}"
            stride = 2 if (s > 1 and j == 0) else 1
            pre = F.relu(bn_eval(sd, f"{p}.bn1", out))
            if f"{p}.shortcut.0.weight" in sd:
                shortcut = F.conv2d(out if raw_shortcut else pre, sd[f"{p}.shortcut.0.weight"], stride=stride)
            else:
                shortcut = out
            h = F.conv2d(pre, sd[f"{p}.conv1.weight"], stride=stride, padding=1)
            h = F.conv2d(F.relu(bn_eval(sd, f"{p}.bn2", h)), sd[f"{p}.conv2.weight"], padding=1)
            out = h + shortcut
    if "bn.weight" in sd:
        out = F.relu(bn_eval(sd, "bn", out))
    out = F.avg_pool2d(out, 4).flatten(1)
    return F.linear(out, sd["linear.weight"], sd["linear.bias"])


# ----------------------------------------------------------------------------- clrobust -> RobustBench names

CLR_TO_WRN = [(r"^encoder\.stem\.conv\.", "conv1."), (r"^encoder\.layer(\d)\.", r"block\1.layer."),
              (r"\.shortcut\.0\.", ".convShortcut."), (r"^encoder\.bn\.", "bn1."), (r"^classifier\.", "fc.")]
CLR_TO_PREACT = [(r"^encoder\.stem\.conv\.", "conv1."), (r"^encoder\.", ""), (r"^classifier\.", "linear.")]


def export(net, rules: List[Tuple[str, str]], norm=ODD, prefix: str = "") -> SD:
    out = {}
    for k, v in net.state_dict().items():
        if k.startswith("normalize."):
            continue
        for pat, rep in rules:
            k = re.sub(pat, rep, k)
        out[k] = v.clone()
    return with_norm(out, norm, prefix)


def tiny_net(arch: str, width: Optional[int] = None, seed: int = 0):
    torch.manual_seed(seed)
    net = create_model(ModelConfig(arch=arch, width=width, proj_dim=None, mean=ODD[0], std=ODD[1]))
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0, 0.2)
                m.running_mean.normal_(0, 0.3)
                m.running_var.uniform_(0.5, 2.0)
    return net.eval()


# ----------------------------------------------------------------------------- tests

WRN_CASES = [  # (depth, widen, key prefix, container, normalisation buffers, sub_block1)
    (10, 1, "", None, ODD, False),
    (16, 2, "model.", None, ODD, True),
    (10, 2, "module.", "state_dict", None, False),
]


@pytest.mark.parametrize("depth,widen,prefix,container,norm,sub", WRN_CASES,
                         ids=["wrn-10-1", "wrn-16-2-model-sub_block1", "wrn-10-2-module-nonorm"])
def test_wrn_matches_reference_forward(depth, widen, prefix, container, norm, sub, tmp_path: Path,
                                       images: torch.Tensor) -> None:
    sd = rb_wrn_state(depth, widen, sub_block1=sub)
    ckpt = with_norm(sd, norm, prefix)
    path = tmp_path / "wrn.pt"
    torch.save({container: ckpt} if container else ckpt, path)

    net, report = load_checkpoint(path)

    assert report.format == "robustbench-wrn"
    assert (report.arch, report.width, report.stem) == (f"wrn-{depth}-{widen}", 16, "cifar")
    assert report.missing == [] and report.unexpected == [] and report.has_classifier
    assert bool(report.dropped) == sub and all(".sub_block1." in f".{k}" for k in report.dropped)
    if norm is None:
        assert report.normalize["mean"] is None
    else:
        assert report.normalize["mean"] + report.normalize["std"] == pytest.approx(list(norm[0] + norm[1]))
    assert net.encoder.feature_dim == 64 * widen
    close(logits(net, images), reference_wrn(sd, images, norm))


@pytest.mark.parametrize("final_bn", [True, False], ids=["preact-resnet18", "preact-resnet18-v1"])
def test_preact_matches_reference_forward(final_bn: bool, tmp_path: Path, images: torch.Tensor) -> None:
    sd = rb_preact_state(width=4, final_bn=final_bn)
    path = tmp_path / "preact.pt"
    torch.save(with_norm(sd, ODD, "model."), path)

    net, report = load_checkpoint(path)

    assert report.format == "robustbench-preact"
    assert report.arch == ("preact-resnet18" if final_bn else "preact-resnet18-v1")
    assert (report.width, report.missing, report.unexpected, report.dropped) == (4, [], [], [])
    close(logits(net, images), reference_preact(sd, images, raw_shortcut=not final_bn, norm=ODD))
    # the other shortcut reading gives different logits: the test can tell the variants apart
    other = reference_preact(sd, images, raw_shortcut=final_bn, norm=ODD)
    assert (logits(net, images) - other).abs().max() > 1e-3


def test_wrn_reference_sees_activate_before_residual(images: torch.Tensor) -> None:
    """A shortcut fed by the raw input (the usual mistake) changes the logits of a WRN with K > 1."""
    sd = rb_wrn_state(10, 2)
    net = create_model(ModelConfig(arch="wrn-10-2", proj_dim=None)).eval()
    enc = net.encoder
    mapped = {re.sub(r"^block(\d)\.layer\.", r"layer\1.", k).replace("convShortcut", "shortcut.0"): v
              for k, v in sd.items() if k.startswith("block")}
    mapped.update({"stem.conv.weight": sd["conv1.weight"],
                   **{f"bn.{k[4:]}": v for k, v in sd.items() if k.startswith("bn1.")}})
    enc.load_state_dict(mapped)
    net.classifier.load_state_dict({"weight": sd["fc.weight"], "bias": sd["fc.bias"]})
    close(logits(net, images), reference_wrn(sd, images))
    for block in (enc.layer1[0], enc.layer2[0], enc.layer3[0]):
        block.raw_shortcut = True
    assert (logits(net, images) - reference_wrn(sd, images)).abs().max() > 1e-3


@pytest.mark.parametrize("arch,width,rules", [
    ("wrn-16-2", None, CLR_TO_WRN), ("wrn-10-1", 8, CLR_TO_WRN),
    ("preact-resnet18", 4, CLR_TO_PREACT), ("preact-resnet18-v1", 4, CLR_TO_PREACT),
], ids=["wrn-16-2", "wrn-10-1-w8", "preact-resnet18", "preact-resnet18-v1"])
def test_clrobust_network_roundtrip(arch, width, rules, tmp_path: Path, images: torch.Tensor) -> None:
    net = tiny_net(arch, width)
    path = tmp_path / "rb.pt"
    torch.save(export(net, rules, prefix="model."), path)

    loaded, report = load_checkpoint(path)

    assert (report.arch, report.width) == (arch, net.config.width)
    assert report.missing == [] and report.unexpected == [] and report.has_classifier
    close(logits(loaded, images), logits(net, images))
    close(loaded.features(images).detach(), net.features(images).detach())


def test_hooks_list_blocks(tmp_path: Path, images: torch.Tensor) -> None:
    path = tmp_path / "wrn.pt"
    torch.save(with_norm(rb_wrn_state(16, 2)), path)
    net, _ = load_checkpoint(path)
    blocks = layer_names(net, "blocks")
    assert blocks == ["stem"] + [f"layer{i}.{j}" for i in (1, 2, 3) for j in (0, 1)] + ["avgpool"]
    acts = record(net, images, "blocks")
    assert acts["layer1.0"].shape == (2, 32, 32, 32) and acts["layer3.1"].shape == (2, 128, 8, 8)
    close(acts["avgpool"], net.features(images).detach())
    every = layer_names(net, "all")
    assert every[0] == "stem.conv" and every[-3:] == ["bn", "relu", "avgpool"]
    assert {"layer1.0.bn1", "layer1.0.relu1", "layer1.0.shortcut.0", "layer2.1.conv2"} <= set(every)
    record(net, images, "all")  # every module runs once per forward

    preact = tiny_net("preact-resnet18-v1", 4)
    assert layer_names(preact, "blocks") == ["stem"] + [f"layer{i}.{j}" for i in range(1, 5) for j in (0, 1)] \
        + ["avgpool"]
    assert "bn" not in layer_names(preact, "all")


def test_arch_names_override_and_errors(tmp_path: Path) -> None:
    assert ModelConfig(arch="wrn-28-10").width == 16 and ModelConfig(arch="preact-resnet18").width == 64
    assert ModelConfig().width == 64
    path = tmp_path / "wrn.pt"
    torch.save(with_norm(rb_wrn_state(10, 1)), path)
    _, report = load_checkpoint(path, arch="wrn-10-1")
    assert report.arch == "wrn-10-1"
    for bad, pattern in [("wrn-abc", "wrn-DEPTH-WIDEN"), ("wrn-12-2", "6n \\+ 4"), ("vgg16", "wrn-DEPTH-WIDEN")]:
        with pytest.raises(ClrobustError, match=pattern) as info:
            load_checkpoint(path, arch=bad)
        assert "\n" not in str(info.value)
    with pytest.raises(ClrobustError, match="do not fit"):
        load_checkpoint(path, arch="wrn-10-2")
    with pytest.raises(ClrobustError, match="CIFAR stem"):
        create_model(ModelConfig(arch="wrn-10-1", stem="imagenet"))


def test_bias_free_classifier_and_dual_bn(tmp_path: Path, images: torch.Tensor) -> None:
    sd = rb_wrn_state(10, 1)
    del sd["fc.bias"]  # WideResNet(bias_last=False)
    path = tmp_path / "nobias.pt"
    torch.save(sd, path)
    net, report = load_checkpoint(path)
    assert report.has_classifier and report.missing == []
    close(logits(net, images), reference_wrn({**sd, "fc.bias": torch.zeros(10)}, images))

    dual = create_model(ModelConfig(arch="wrn-10-1", dual_bn=True, proj_dim=None)).eval()
    assert has_dual_bn(dual)
    with torch.no_grad():
        for m in dual.modules():
            if hasattr(m, "adv"):
                m.adv.running_mean.normal_(0, 0.5)
        clean = dual(images)
        with adversarial_bn(dual):
            adv = dual(images)
    assert (clean - adv).abs().max() > 1e-4


def test_inspect_convert_and_attack(tmp_path: Path, images: torch.Tensor) -> None:
    from click.testing import CliRunner

    from clrobust.attacks import AttackSpec, attack_batch
    from clrobust.checkpoints import load as load_model
    from clrobust.cli import cli

    path = tmp_path / "wrn.pt"
    torch.save(with_norm(rb_wrn_state(10, 2), prefix="model."), path)
    res = CliRunner().invoke(cli, ["inspect", str(path)])
    assert res.exit_code == 0, res.output
    assert "robustbench-wrn" in res.output and "wrn-10-2, width 16" in res.output
    res = CliRunner().invoke(cli, ["convert", str(path), str(tmp_path / "conv")])
    assert res.exit_code == 0, res.output
    native = load_model(str(tmp_path / "conv.safetensors"))
    direct, _ = load_checkpoint(path)
    close(logits(native.network, images), logits(direct, images))

    y = torch.tensor([0, 1])
    adv = attack_batch(AttackSpec("pgd", 8 / 255, steps=2), direct, images, y)
    assert (adv - images).abs().max() <= 8 / 255 + 1e-6 and not torch.equal(adv, images)
