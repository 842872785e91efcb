"""Library networks by name: ``torchvision:NAME=WEIGHTS`` (and ``timm:`` through a stand-in module), checked
against the library's own network on the same weights."""

from __future__ import annotations

import subprocess
import sys
import types

import pytest
import torch
import torchvision
from torch import nn

from clrobust.checkpoints import load
from clrobust.errors import ClrobustError
from clrobust.hooks import layer_names

IMAGENET = (torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1), torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1))


@pytest.fixture(scope="module")
def resnet18_file(tmp_path_factory):
    torch.manual_seed(0)
    net = torchvision.models.resnet18(num_classes=10).eval()
    path = tmp_path_factory.mktemp("tv") / "cifar_resnet18.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in net.state_dict().items()}}, path)  # a DDP container
    return net, path


def test_a_torchvision_network_by_name_gives_the_library_logits(resnet18_file):
    ref, path = resnet18_file
    lm = load(f"torchvision:resnet18={path}")
    assert lm.label == "cifar_resnet18" and lm.has_classifier and lm.num_classes == 10
    assert lm.source_format == "torchvision" and lm.network.config.arch == "torchvision:resnet18"
    x = torch.rand(3, 3, 48, 48)
    with torch.no_grad():
        want = ref((x - IMAGENET[0]) / IMAGENET[1])
        torch.testing.assert_close(lm.network(x), want, rtol=0, atol=1e-5)
        h = ref.maxpool(ref.relu(ref.bn1(ref.conv1((x - IMAGENET[0]) / IMAGENET[1]))))
        h = ref.avgpool(ref.layer4(ref.layer3(ref.layer2(ref.layer1(h)))))
        torch.testing.assert_close(lm.network.features(x), torch.flatten(h, 1), rtol=0, atol=1e-5)
    assert layer_names(lm.network, "blocks") == ["net.conv1"] + [f"net.layer{i}.{j}" for i in range(1, 5)
                                                                   for j in (0, 1)] + ["avgpool"]
    own = load(f"torchvision:resnet18={path}", normalize="cifar10").network.config
    assert own.mean != lm.network.config.mean  # --normalize still applies


def test_library_model_errors_are_one_line(resnet18_file, tmp_path):
    _, path = resnet18_file
    with pytest.raises(ClrobustError, match="torchvision has no model 'resnet19'"):
        load(f"torchvision:resnet19={path}")
    with pytest.raises(ClrobustError, match="is not a torchvision:resnet34 state dict: it lacks"):
        load(f"torchvision:resnet34={path}")
    with pytest.raises(ClrobustError, match="not found"):
        load(f"torchvision:resnet18={tmp_path / 'missing.pth'}")
    with pytest.raises(ClrobustError, match="letters, digits"):
        load("torchvision:resnet18;rm")
    random = load("torchvision:resnet18")
    assert random.label == "resnet18-random-init" and not random.has_classifier and random.num_classes == 1000


@pytest.mark.slow
def test_a_library_model_converts_to_a_native_checkpoint(resnet18_file, tmp_path):
    _, path = resnet18_file
    out = tmp_path / "native"
    p = subprocess.run([sys.executable, "-m", "clrobust", "convert", f"torchvision:resnet18={path}", str(out)],
                       capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    a, b = load(f"torchvision:resnet18={path}").network, load(str(out) + ".safetensors").network
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(a(x), b(x))


class _TinyTimmNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(4, 7)

    def forward(self, x):
        return self.head(self.pool(self.stem(x)).flatten(1))


def test_timm_models_load_lazily_when_timm_is_there(monkeypatch, tmp_path):
    fake = types.SimpleNamespace(is_model=lambda name: name == "tiny", create_model=lambda name, pretrained: (
        _TinyTimmNet() if not pretrained else pytest.fail("no download")))
    monkeypatch.setitem(sys.modules, "timm", fake)
    torch.manual_seed(1)
    ref = _TinyTimmNet().eval()
    torch.save(ref.state_dict(), tmp_path / "tiny.pth")
    lm = load(f"timm:tiny={tmp_path / 'tiny.pth'}")
    assert lm.num_classes == 7 and lm.source_format == "timm"
    x = torch.rand(2, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(lm.network(x), ref((x - IMAGENET[0]) / IMAGENET[1]), rtol=0, atol=1e-6)
    with pytest.raises(ClrobustError, match="timm has no model 'huge'"):
        load("timm:huge")
    monkeypatch.setitem(sys.modules, "timm", None)  # not installed
    with pytest.raises(ClrobustError, match=r"needs timm.*clrobust\[timm\]"):
        load("timm:tiny")
