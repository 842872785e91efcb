"""DeepMind-style RobustBench checkpoints (DMWideResNet, DMPreActResNet): detection, inference, exact forward.

State dicts are written in DeepMind's own key names (``init_conv``, ``layer.K.block.J.batchnorm_0``,
``conv_2d``, ``layer_K.J.conv_2d_1``, ``logits``, ``mean``/``std`` buffers), loaded by auto-detection,
and their logits compared with a reference forward written here with torch.nn.functional following
DeepMind's model code: Swish, stride-2 convs padded bottom/right only, and for the PreActResNet 3x3
shortcuts from the raw block input. Controls show that symmetric padding or ReLU change the logits.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

import pytest
import torch
import torch.nn.functional as F

from clrobust.checkpoints.thirdparty import load_checkpoint
from clrobust.errors import ClrobustError
from clrobust.hooks import layer_names, record
from tests.thirdparty_nets import SD, bn_eval, close, logits, rand_bn, rand_conv

pytestmark = pytest.mark.usefixtures("one_thread")
ODD = ((0.3, 0.4, 0.5), (0.21, 0.22, 0.23))
DM_CIFAR10 = ((0.4914, 0.4822, 0.4465), (0.2471, 0.2435, 0.2616))


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))


# ----------------------------------------------------------------------------- DeepMind-named state dicts

def _head(sd: SD, c: int, g: torch.Generator) -> None:
    rand_bn(sd, "batchnorm", c, g)
    sd["logits.weight"] = 0.1 * torch.randn(10, c, generator=g)
    sd["logits.bias"] = 0.1 * torch.randn(10, generator=g)


def dm_wrn_state(depth: int, widen: int, seed: int = 0) -> SD:
    """``DMWideResNet(depth=depth, width=widen)`` keys and shapes, random values."""
    g = torch.Generator().manual_seed(seed)
    n = (depth - 4) // 6
    ch = [16, 16 * widen, 32 * widen, 64 * widen]
    sd: SD = {}
    rand_conv(sd, "init_conv", ch[0], 3, 3, g)
    for k in range(3):
        for j in range(n):
            p, cin, cout = f"layer.{k}.block.{j}", ch[k] if j == 0 else ch[k + 1], ch[k + 1]
            rand_bn(sd, f"{p}.batchnorm_0", cin, g)
            rand_conv(sd, f"{p}.conv_0", cout, cin, 3, g)
            rand_bn(sd, f"{p}.batchnorm_1", cout, g)
            rand_conv(sd, f"{p}.conv_1", cout, cout, 3, g)
            if cin != cout:
                rand_conv(sd, f"{p}.shortcut", cout, cin, 1, g)
    _head(sd, ch[3], g)
    return sd


def dm_preact_state(blocks: Sequence[int], width: int, seed: int = 0) -> SD:
    """``DMPreActResNet`` keys and shapes (its base width 64 scaled to ``width``), random values."""
    g = torch.Generator().manual_seed(seed)
    sd: SD = {}
    rand_conv(sd, "conv_2d", width, 3, 3, g)
    cin = width
    for s, n in enumerate(blocks):
        planes = width * 2 ** s
        for j in range(n):
            p, stride = f"layer_{s}.{j}", 2 if (s > 0 and j == 0) else 1
            rand_bn(sd, f"{p}.batchnorm_0", cin, g)
            rand_conv(sd, f"{p}.conv_2d_1", planes, cin, 3, g)
            rand_bn(sd, f"{p}.batchnorm_1", planes, g)
            rand_conv(sd, f"{p}.conv_2d_2", planes, planes, 3, g)
            if stride != 1 or cin != planes:
                rand_conv(sd, f"{p}.shortcut", planes, cin, 3, g)
            cin = planes
    _head(sd, cin, g)
    return sd


def with_buffers(sd: SD, norm=ODD, prefix: str = "") -> SD:
    """DMWideResNet's registered ``mean``/``std`` buffers (shape 3x1x1) and an optional key prefix."""
    out = {prefix + k: v for k, v in sd.items()}
    if norm is not None:
        out[prefix + "mean"] = torch.tensor(norm[0]).view(3, 1, 1)
        out[prefix + "std"] = torch.tensor(norm[1]).view(3, 1, 1)
    return out


# ----------------------------------------------------------------------------- reference forwards

Act = Callable[[torch.Tensor], torch.Tensor]


def swish(x: torch.Tensor) -> torch.Tensor:
    return x * torch.sigmoid(x)


def _pad(x: torch.Tensor, stride: int, asymmetric: bool) -> torch.Tensor:
    return F.pad(x, (0, 1, 0, 1) if stride == 2 and asymmetric else (1, 1, 1, 1))


def _normalize(x: torch.Tensor, norm) -> torch.Tensor:
    return (x - torch.tensor(norm[0]).view(1, 3, 1, 1)) / torch.tensor(norm[1]).view(1, 3, 1, 1)


def _logits(sd: SD, out: torch.Tensor, act: Act) -> torch.Tensor:
    out = act(bn_eval(sd, "batchnorm", out))
    out = F.avg_pool2d(out, out.shape[-1]).flatten(1)
    return F.linear(out, sd["logits.weight"], sd["logits.bias"])


def reference_dm_wrn(sd: SD, x: torch.Tensor, norm, act: Act = swish, asymmetric: bool = True) -> torch.Tensor:
    """DMWideResNet's forward: conv_0 without padding after F.pad; the shortcut reads the activation."""
    out = F.conv2d(_normalize(x, norm), sd["init_conv.weight"], padding=1)
    for k in range(3):
        j = 0
        while f"layer.{k}.block.{j}.conv_0.weight" in sd:
            p, stride = f"layer.{k}.block.{j}", 2 if (k > 0 and j == 0) else 1
            pre = act(bn_eval(sd, f"{p}.batchnorm_0", out))
            if f"{p}.shortcut.weight" in sd:
                skip = F.conv2d(pre, sd[f"{p}.shortcut.weight"], stride=stride)
            else:
                skip = out
            h = F.conv2d(_pad(pre, stride, asymmetric), sd[f"{p}.conv_0.weight"], stride=stride)
            h = F.conv2d(act(bn_eval(sd, f"{p}.batchnorm_1", h)), sd[f"{p}.conv_1.weight"], padding=1)
            out = skip + h
            j += 1
    return _logits(sd, out, act)


def reference_dm_preact(sd: SD, x: torch.Tensor, norm, act: Act = swish, asymmetric: bool = True) -> torch.Tensor:
    """DMPreActResNet's forward: padded 3x3 shortcut from the raw block input."""
    out = F.conv2d(_normalize(x, norm), sd["conv_2d.weight"], padding=1)
    s = 0
    while f"layer_{s}.0.conv_2d_1.weight" in sd:
        j = 0
        while f"layer_{s}.{j}.conv_2d_1.weight" in sd:
            p, stride = f"layer_{s}.{j}", 2 if (s > 0 and j == 0) else 1
            pre = act(bn_eval(sd, f"{p}.batchnorm_0", out))
            if f"{p}.shortcut.weight" in sd:
                skip = F.conv2d(_pad(out, stride, asymmetric), sd[f"{p}.shortcut.weight"], stride=stride)
            else:
                skip = out
            h = F.conv2d(_pad(pre, stride, asymmetric), sd[f"{p}.conv_2d_1.weight"], stride=stride)
            h = F.conv2d(act(bn_eval(sd, f"{p}.batchnorm_1", h)), sd[f"{p}.conv_2d_2.weight"], padding=1)
            out = skip + h
            j += 1
        s += 1
    return _logits(sd, out, act)


def differs(a: torch.Tensor, b: torch.Tensor) -> bool:
    return bool((a - b).abs().max() > 1e-3)


def save(tmp_path: Path, obj, name: str = "dm.pt") -> Path:
    path = tmp_path / name
    torch.save(obj, path)
    return path


# ----------------------------------------------------------------------------- tests

WRN_CASES = [  # (depth, widen, key prefix, container, mean/std buffers)
    (10, 1, "", None, ODD),
    (16, 2, "model.", None, ODD),
    (10, 2, "module.", "model_state_dict", None),
]


@pytest.mark.parametrize("depth,widen,prefix,container,norm", WRN_CASES,
                         ids=["dm-wrn-10-1", "dm-wrn-16-2-model", "dm-wrn-10-2-module-nobuffers"])
def test_dm_wrn_matches_reference_forward(depth, widen, prefix, container, norm, tmp_path: Path,
                                          images: torch.Tensor) -> None:
    sd = dm_wrn_state(depth, widen)
    ckpt = with_buffers(sd, norm, prefix)
    net, report = load_checkpoint(save(tmp_path, {container: ckpt} if container else ckpt))

    assert report.format == "robustbench-dm-wrn"
    assert (report.arch, report.width, report.stem) == (f"dm-wrn-{depth}-{widen}", 16, "cifar")
    assert report.missing == report.unexpected == report.dropped == [] and report.has_classifier
    expected = norm or DM_CIFAR10
    assert report.normalize["mean"] + report.normalize["std"] == pytest.approx(list(expected[0] + expected[1]))
    assert ("buffers" in report.normalize["origin"]) == (norm is not None)
    assert net.encoder.feature_dim == 64 * widen
    out = logits(net, images)
    close(out, reference_dm_wrn(sd, images, expected))
    # the test can tell the usual mistakes apart: symmetric padding, ReLU instead of Swish
    assert differs(out, reference_dm_wrn(sd, images, expected, asymmetric=False))
    assert differs(out, reference_dm_wrn(sd, images, expected, act=F.relu))


@pytest.mark.parametrize("depth,blocks", [(18, (2, 2, 2, 2)), (34, (3, 4, 6, 3))],
                         ids=["dm-preact-resnet18", "dm-preact-resnet34"])
def test_dm_preact_matches_reference_forward(depth, blocks, tmp_path: Path, images: torch.Tensor) -> None:
    sd = dm_preact_state(blocks, width=4)
    net, report = load_checkpoint(save(tmp_path, with_buffers(sd, ODD, "module.model.")))

    assert report.format == "robustbench-dm-preact"
    assert (report.arch, report.width) == (f"dm-preact-resnet{depth}", 4)
    assert report.missing == report.unexpected == report.dropped == [] and report.has_classifier
    out = logits(net, images)
    close(out, reference_dm_preact(sd, images, ODD))
    assert differs(out, reference_dm_preact(sd, images, ODD, asymmetric=False))
    assert differs(out, reference_dm_preact(sd, images, ODD, act=F.relu))


def test_relu_override_and_bad_names(tmp_path: Path, images: torch.Tensor) -> None:
    sd = dm_wrn_state(10, 1)
    path = save(tmp_path, with_buffers(sd))
    net, report = load_checkpoint(path, arch="dm-wrn-10-1-relu")
    assert report.arch == "dm-wrn-10-1-relu" and report.format == "robustbench-dm-wrn"
    close(logits(net, images), reference_dm_wrn(sd, images, ODD, act=F.relu))

    psd = dm_preact_state((2, 2, 2, 2), width=4)
    net, report = load_checkpoint(save(tmp_path, with_buffers(psd), "p.pt"), arch="dm-preact-resnet18-relu")
    close(logits(net, images), reference_dm_preact(psd, images, ODD, act=F.relu))

    for bad, pattern in [("dm-wrn-10-1-gelu", "dm-wrn-DEPTH-WIDEN"), ("dm-wrn-12-1", "6n \\+ 4"),
                         ("dm-preact-resnet50", "dm-wrn-DEPTH-WIDEN")]:
        with pytest.raises(ClrobustError, match=pattern) as info:
            load_checkpoint(path, arch=bad)
        assert "\n" not in str(info.value)
    with pytest.raises(ClrobustError, match="do not fit"):
        load_checkpoint(path, arch="dm-wrn-10-2")


def test_hooks_attack_and_inspect(tmp_path: Path, images: torch.Tensor) -> None:
    from click.testing import CliRunner

    from clrobust.attacks import AttackSpec, attack_batch
    from clrobust.cli import cli

    path = save(tmp_path, with_buffers(dm_wrn_state(16, 1), prefix="model."))
    net, _ = load_checkpoint(path)
    blocks = layer_names(net, "blocks")
    assert blocks == ["stem"] + [f"layer{i}.{j}" for i in (1, 2, 3) for j in (0, 1)] + ["avgpool"]
    acts = record(net, images, "blocks")
    assert acts["layer2.0"].shape == (2, 32, 16, 16) and acts["layer3.1"].shape == (2, 64, 8, 8)
    close(acts["avgpool"], net.features(images).detach())
    every = layer_names(net, "all")
    assert every[0] == "stem.conv" and every[-3:] == ["bn", "relu", "avgpool"]
    assert {"layer1.0.relu1", "layer2.0.conv1", "layer2.0.shortcut.0", "layer3.1.relu2"} <= set(every)
    acts = record(net, images, "all")  # every module, activations included, runs once per forward
    assert acts["layer2.0.conv1"].shape == (2, 32, 16, 16)

    y = torch.tensor([0, 1])
    adv = attack_batch(AttackSpec("pgd", 8 / 255, steps=1), net, images, y)
    assert (adv - images).abs().max() <= 8 / 255 + 1e-6 and not torch.equal(adv, images)

    res = CliRunner().invoke(cli, ["inspect", str(path)])
    assert res.exit_code == 0, res.output
    assert "robustbench-dm-wrn" in res.output and "dm-wrn-16-1" in res.output

