"""The layer recorder: one forward per batch, hooks removed, exact activations, clear errors."""

import copy
from typing import Dict, List, Tuple

import pytest
import torch
from conftest import tiny_network
from torch import nn

from clrobust.errors import ClrobustError
from clrobust.hooks import LayerRecorder, _summarise, execution_order, layer_names, record

pytestmark = pytest.mark.usefixtures("one_thread")


class Toy(nn.Module):
    """conv - bn - relu - fc (needs exactly 3 x 32 x 32 inputs), plus a module off the forward path."""

    def __init__(self, act: nn.Module = None):
        super().__init__()
        self.conv = nn.Conv2d(3, 2, 3, padding=1)
        self.bn = nn.BatchNorm2d(2)
        self.relu = act if act is not None else nn.ReLU()
        self.fc = nn.Linear(2 * 32 * 32, 3)
        self.unused = nn.Linear(3, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.relu(self.bn(self.conv(x))).flatten(1))


class Pair(nn.Module):
    def forward(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        return 2 * x, 3 * x


class TupleOut(nn.Module):
    """A child that returns a tuple (as RNNs and some attention blocks do)."""

    def __init__(self):
        super().__init__()
        self.pair = Pair()
        self.lin = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = self.pair(x)
        return self.lin((a + b).flatten(1)[:, :4])


def _snapshot(model: nn.Module) -> Dict[str, torch.Tensor]:
    """Every parameter and buffer (BN running stats and num_batches_tracked included)."""
    return {k: v.clone() for k, v in model.state_dict().items()}


def _assert_same_state(model: nn.Module, before: Dict[str, torch.Tensor]) -> None:
    after = model.state_dict()
    assert after.keys() == before.keys()
    changed: List[str] = [k for k in before if not torch.equal(after[k], before[k])]
    assert not changed, f"the forward pass changed {changed[:5]}"


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
    # Forward order: inside a block its children come first and the block (its output) last.
    assert layer_names(net, "layer4.*") == ["layer4.0.conv1", "layer4.0.bn1", "layer4.0.relu1", "layer4.0.conv2",
                                            "layer4.0.bn2", "layer4.0.shortcut.0", "layer4.0.shortcut.1",
                                            "layer4.0.shortcut", "layer4.0.relu2", "layer4.0",
                                            "layer4.1.conv1", "layer4.1.bn1", "layer4.1.relu1", "layer4.1.conv2",
                                            "layer4.1.bn2", "layer4.1.shortcut", "layer4.1.relu2", "layer4.1"]
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


def test_record_runs_in_eval_mode_and_restores_train_mode():
    net = tiny_network()
    x = torch.rand(4, 3, 32, 32)
    with LayerRecorder(net, "blocks") as rec:
        assert rec.output is None
        want = rec.record(x)
        want_out = rec.output
    assert not net.training  # an eval-mode caller stays in eval mode
    with torch.no_grad():
        assert torch.equal(want_out, net(x))
    net.train()
    before = _snapshot(net)
    with LayerRecorder(net, "blocks") as rec:
        got = rec.record(x)
        assert net.training
        assert torch.equal(rec.output, want_out)
    assert net.training and all(m.training for m in net.modules())
    _assert_same_state(net, before)  # BN running statistics and num_batches_tracked untouched
    assert list(got) == list(want)
    for name in want:
        assert torch.equal(got[name], want[name]), name


def test_layer_sets_resolve_in_eval_mode_and_restore_train_mode():
    net = tiny_network()
    want_all = layer_names(net, "all")
    want_glob = layer_names(net, "layer2.*")
    net.train()
    before = _snapshot(net)
    assert layer_names(net, "all") == want_all
    assert layer_names(net, "layer2.*") == want_glob
    assert execution_order(net, ["avgpool", "stem.bn"]) == ["stem.bn", "avgpool"]
    assert net.training
    _assert_same_state(net, before)
    net.eval()
    assert execution_order(net, ["avgpool", "stem"]) == ["stem", "avgpool"] and not net.training


def test_all_set_contents():
    net = tiny_network()
    names = layer_names(net, "all")
    assert names[:4] == ["stem.conv", "stem.bn", "stem.relu", "stem"] and names[-1] == "avgpool"
    assert "layer2.0.shortcut.0" in names and "layer2.0.shortcut.1" in names
    assert "layer2.0.shortcut" not in names and "stem.maxpool" not in names  # containers, identities
    assert len(names) == len(set(names)) == 67
    assert layer_names(Toy(nn.SiLU()), "all") == ["conv", "bn", "relu"]  # SiLU counts; Linear does not


def test_explicit_names_keep_their_order():
    net = tiny_network()
    x = torch.rand(2, 3, 32, 32)
    with LayerRecorder(net, ["avgpool", "stem"]) as rec:
        assert rec.names == ["avgpool", "stem"]
        assert list(rec.record(x)) == ["avgpool", "stem"]
    acts = record(net, x, "blocks", names=["layer1.1", "stem"])
    assert list(acts) == ["layer1.1", "stem"]
    assert list(record(net, x, "stem,layer1.*")) == ["stem", "layer1.0.conv1", "layer1.0.bn1", "layer1.0.relu1",
                                                      "layer1.0.conv2", "layer1.0.bn2", "layer1.0.shortcut",
                                                      "layer1.0.relu2", "layer1.0", "layer1.1.conv1", "layer1.1.bn1",
                                                      "layer1.1.relu1", "layer1.1.conv2", "layer1.1.bn2",
                                                      "layer1.1.shortcut", "layer1.1.relu2", "layer1.1"]


def test_patterns_lists_spaces_and_duplicates():
    net = tiny_network()
    assert layer_names(net, " avgpool , ,stem,") == ["stem", "avgpool"]
    assert layer_names(net, ["avgpool", "stem"]) == ["stem", "avgpool"]
    assert layer_names(net, "stem*,stem.conv,stem") == ["stem.conv", "stem.bn", "stem.relu", "stem.maxpool", "stem"]
    assert layer_names(net, ["layer1.?", "layer1.0"]) == ["layer1.0", "layer1.1"]
    with pytest.raises(ClrobustError, match=r"^layer 'layer9\.0' matches no module; valid names: stem, stem\.conv, "
                                            r"stem\.bn, .*, \.\.\. \(\d+ in all; see `clrobust inspect`\) "
                                            r"\(or the sets: blocks, all\)\.$"):
        layer_names(net, "stem,layer9.0")


def test_blocks_need_a_clrobust_encoder():
    with pytest.raises(ClrobustError, match=r"^layer set 'blocks' needs a clrobust encoder \(ResNet, PreActResNet, "
                                            r"WRN\); give glob patterns\.$"):
        layer_names(Toy(), "blocks")
    assert layer_names(Toy(), "*") == ["conv", "bn", "relu", "fc", "unused"]


def test_summarise():
    names = [f"m{i}" for i in range(41)]
    assert _summarise(names[:40]) == ", ".join(names[:40])
    assert _summarise(names) == ", ".join(names[:40]) + ", ... (41 in all; see `clrobust inspect`)"
    assert _summarise(names[:3], limit=2) == "m0, m1, ... (3 in all; see `clrobust inspect`)"
    assert _summarise([]) == ""


def test_execution_order_of_a_plain_model():
    toy = Toy()
    assert execution_order(toy, ["unused", "fc", "relu", "conv"]) == ["conv", "relu", "fc", "unused"]
    assert not any(m._forward_hooks for m in toy.modules())
    toy.train()
    before = _snapshot(toy)
    assert execution_order(toy, ["bn", "conv"]) == ["conv", "bn"] and toy.training
    _assert_same_state(toy, before)


def test_execution_order_counts_a_repeated_module_once():
    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.relu = nn.ReLU()
            self.fc = nn.Linear(4, 4)

        def forward(self, x):
            return self.relu(self.fc(self.relu(x.flatten(1)[:, :4])))

    assert execution_order(Twice(), ["fc", "relu"]) == ["relu", "fc"]


def test_execution_order_uses_the_model_device():
    """The dry pass runs where the parameters are (here: the meta device), on parameter-free models too."""
    meta = Toy().to("meta")
    assert execution_order(meta, ["fc", "conv"]) == ["conv", "fc"]
    bare = nn.Sequential(nn.ReLU(), nn.Flatten(), nn.Identity())
    assert execution_order(bare, ["2", "0"]) == ["0", "2"]


def test_recorder_errors():
    net = tiny_network()
    rec = LayerRecorder(net, "stem")
    with pytest.raises(RuntimeError, match=r"^LayerRecorder\.record\(\) outside its `with` block$"):
        rec.record(torch.rand(2, 3, 32, 32))
    with pytest.raises(ClrobustError, match=r"^layer 'nope' does not exist; valid names: stem, stem\.conv, "
                                            r"stem\.bn, .*, \.\.\. \(\d+ in all; see `clrobust inspect`\)\.$"):
        LayerRecorder(net, ["stem", "nope"])
    with pytest.raises(ClrobustError, match=r"^layer 'unused' produced no output in the forward pass; it is not "
                                            r"on the path from input to features\.$"):
        record(Toy(), torch.rand(2, 3, 32, 32), names=["conv", "unused"])


def test_recorder_error_messages_in_full():
    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.relu = nn.ReLU()

        def forward(self, x):
            return self.relu(self.relu(x) - 1)

    with pytest.raises(ClrobustError, match=r"^module 'relu' runs 2 times per forward pass, so its hook cannot tell "
                                            r"the calls apart; record its parent block instead\.$"):
        record(Twice(), torch.rand(2, 3), names=["relu"])
    net = tiny_network()
    with torch.no_grad():
        net.encoder.layer2[0].conv1.weight[0, 0, 0, 0] = float("inf")
    msg = (r"^layer 'layer2\.0' produced NaN or infinite activations; the checkpoint or the input normalisation "
           r"is broken \(check --normalize\)\.$")
    with pytest.raises(ClrobustError, match=msg):
        record(net, torch.rand(2, 3, 32, 32), "blocks")


def test_tuple_outputs_record_their_first_element():
    x = torch.rand(2, 4)
    acts = record(TupleOut(), x, names=["pair", "lin"])
    assert torch.equal(acts["pair"], 2 * x)
    assert acts["lin"].shape == (2, 4)


def test_plain_forward_inside_the_block_and_repeated_records():
    net = tiny_network()
    x, x2 = torch.rand(2, 3, 32, 32), torch.rand(3, 3, 32, 32)
    with LayerRecorder(net, ["stem", "avgpool"]) as rec:
        with torch.no_grad():
            net(x2)  # a pass outside record() must not break the next one
            net(x2)
        acts = rec.record(x)
        again = rec.record(x2)
    with torch.no_grad():
        assert torch.equal(acts["avgpool"], net.features(x))
        assert torch.equal(again["avgpool"], net.features(x2)) and torch.equal(rec.output, net(x2))
    rec.remove()  # removing twice is harmless


def test_blocks_is_the_default_layer_set():
    net = tiny_network()
    blocks = layer_names(net, "blocks")
    assert layer_names(net) == blocks
    assert LayerRecorder(net).names == blocks
    assert list(record(net, torch.rand(2, 3, 32, 32))) == blocks


def test_in_place_operations_do_not_change_what_was_recorded():
    """A torchvision ResNet (ReLU(inplace=True), ``out += identity``) records the values of a run
    without any in-place operation."""
    import copy as copy_mod

    import torch.nn.functional as F
    from torchvision.models import resnet18
    from torchvision.models.resnet import BasicBlock

    torch.manual_seed(0)
    net = resnet18(weights=None, num_classes=10).eval()
    for m in net.modules():  # non-trivial statistics, so each BN output has negative values
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.normal_(0, 0.5)
            m.bias.data.normal_(0, 0.5)
    reference = copy_mod.deepcopy(net)

    def out_of_place(block: BasicBlock, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(block.bn1(block.conv1(x)))
        out = block.bn2(block.conv2(out))
        identity = block.downsample(x) if block.downsample is not None else x
        return F.relu(out + identity)

    for m in reference.modules():
        if isinstance(m, nn.ReLU):
            m.inplace = False
        if isinstance(m, BasicBlock):
            m.forward = (lambda b: (lambda x: out_of_place(b, x)))(m)
    layers = ["bn1", "layer1.0.bn1", "layer1.0.bn2", "layer1.0", "layer2.1.bn2", "layer4.1"]
    x = torch.rand(2, 3, 32, 32)
    got = record(net, x, names=layers)
    want = record(reference, x, names=layers)
    for name in layers:
        torch.testing.assert_close(got[name], want[name], rtol=0, atol=0, msg=name)
    assert got["bn1"].min() < 0 and got["layer1.0.bn2"].min() < 0  # not overwritten by the ReLU after them


def test_an_empty_layer_list_records_nothing_and_keeps_the_output():
    net = tiny_network()
    x = torch.rand(2, 3, 32, 32)
    rec = LayerRecorder(net, [])
    with pytest.raises(RuntimeError, match="outside its `with` block"):
        rec.record(x)
    with rec:
        assert rec.record(x) == {}
        with torch.no_grad():
            assert torch.equal(rec.output, net(x))
    with pytest.raises(RuntimeError, match="outside its `with` block"):
        rec.record(x)  # closed again after the block


def test_execution_order_feeds_the_models_own_input_size():
    """A model whose config names its input size (e.g. 64 x 64) gets a dry pass of that size; 32 x 32 would
    not even run through it."""
    from types import SimpleNamespace

    class Big(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 2, 3, padding=1)
            self.fc = nn.Linear(2 * 64 * 64, 3)
            self.config = SimpleNamespace(extra={"input_size": 64})

        def forward(self, x):
            return self.fc(self.conv(x).flatten(1))

    assert execution_order(Big(), ["fc", "conv"]) == ["conv", "fc"]
    plain = Big()
    del plain.config
    with pytest.raises(RuntimeError):
        execution_order(plain, ["fc", "conv"])


def test_an_empty_layer_list_is_refused_with_the_fix():
    for empty in ("", " , ", []):
        with pytest.raises(ClrobustError, match=r"^no layers given \(--layers is empty\); use blocks, all, or "
                           r"comma-separated names or glob patterns such as 'layer3\.\*,avgpool'\.$"):
            layer_names(tiny_network(), empty)
