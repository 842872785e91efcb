"""The generic checkpoint mapping, rule by rule: find_state_dict, unwrap, canonical_key, map_state,
key_overlap and infer_arch, on small hand-written state dicts (no files, no third-party nets)."""

from __future__ import annotations

import dataclasses
import re
from typing import Dict, Optional, Sequence

import pytest
import torch
from torch import nn

from clrobust.checkpoints.mapping import (
    CONTAINER_KEYS,
    ArchGuess,
    canonical_key,
    find_state_dict,
    infer_arch,
    key_overlap,
    map_state,
    unwrap,
)
from clrobust.checkpoints.table import CheckpointFormat
from clrobust.errors import ClrobustError
from clrobust.models import ModelConfig, create_model

SD = Dict[str, torch.Tensor]

#: A format exercising every rule: two prefixes, renames, heads, two kinds of BN copies.
FMT = CheckpointFormat(
    "unit", "unit tests", recognise=(),
    prefixes=("enc.", "enc.module."),
    renames=((r"^conv1\.", "stem.conv."), (r"^bn1\.", "stem.bn."), (r"^linear\.", "classifier.")),
    heads=(r"^proj\.", r"\.tracker\."),
    bn_branches=((r"\.bn_list\.(?P<branch>\d+)\.", ".", None), (r"_adv\.", ".", 1)))


def t(*values: float) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float32)


# ----------------------------------------------------------------------------- find_state_dict

def test_find_state_dict_in_a_module():
    lin = nn.Linear(2, 3)
    state, where, top = find_state_dict(lin)
    assert (sorted(state), where, top) == (["bias", "weight"], "<module>", [])
    assert torch.equal(state["weight"], lin.weight)


def test_find_state_dict_flat():
    a, b = t(1), t(2)
    state, where, top = find_state_dict({"a": a, "epoch": 3, "b": b})
    assert state == {"a": a, "b": b} and where is None and top == ["a", "epoch", "b"]
    state, where, _ = find_state_dict({"a": a, "epoch": 3})  # exactly half tensors: still the state dict
    assert state == {"a": a} and where is None
    state, _, top = find_state_dict({0: a, 1: b})  # keys become strings
    assert state == {"0": a, "1": b} and top == ["0", "1"]
    state, where, _ = find_state_dict({"w": a})
    assert state == {"w": a} and where is None


def test_find_state_dict_containers_in_order():
    a, b = t(1), t(2)
    ckpt = {"epoch": 1, "model": {"m": a}, "state_dict": {"s": b, "step": 5}, "opt": {"lr": 0.1}}
    state, where, top = find_state_dict(ckpt)
    assert state == {"s": b} and where == "state_dict" and top == ["epoch", "model", "state_dict", "opt"]
    state, where, _ = find_state_dict({"epoch": 1, "model": {"m": a}})
    assert state == {"m": a} and where == "model"
    lin = nn.Linear(1, 1)
    state, where, _ = find_state_dict({"arch": "x", "net": lin})
    assert where == "net" and sorted(state) == ["bias", "weight"]
    # a container that is not a state dict is skipped; the next one is used
    state, where, _ = find_state_dict({"model": "resnet18", "state_dict": {"lr": 0.1}, "encoder": {"e": a}})
    assert state == {"e": a} and where == "encoder"
    assert CONTAINER_KEYS.index("state_dict") == 0 and CONTAINER_KEYS[-1] == "model_state_dict"
    for key in CONTAINER_KEYS:
        assert find_state_dict({key: {"k": a}, "epoch": 2, "best": 0.5})[1] == key


def test_find_state_dict_errors():
    with pytest.raises(ClrobustError, match=r"^the checkpoint holds a list, not a dict of weights; save "
                                            r"model\.state_dict\(\) instead\.$"):
        find_state_dict([t(1)])
    expected = ", ".join(CONTAINER_KEYS)
    with pytest.raises(ClrobustError, match=r"^no state dict found in the checkpoint \(top-level keys: a, epoch, lr\); "
                                            rf"expected one under {expected} or a flat dict of tensors\.$"):
        find_state_dict({"a": t(1), "epoch": 1, "lr": 0.1})  # 1 tensor of 3: not a state dict
    with pytest.raises(ClrobustError, match=r"\(top-level keys: \); expected"):
        find_state_dict({})
    many = {f"k{i}": i for i in range(14)}
    with pytest.raises(ClrobustError, match=r"\(top-level keys: k0, k1, k2, k3, k4, k5, k6, k7, k8, k9, k10, k11\);"):
        find_state_dict(many)


# ----------------------------------------------------------------------------- unwrap

def test_unwrap():
    a, b = t(1), t(2)
    assert unwrap({"module.x": a, "module.y": b}) == {"x": a, "y": b}
    assert unwrap({"module.module.x": a}) == {"x": a}
    assert unwrap({"module.x": a, "y": b}) == {"module.x": a, "y": b}  # not shared by every key: kept
    assert unwrap({"module._orig_mod.x": a, "enc._orig_mod.y": b}) == {"module.x": a, "enc.y": b}
    assert unwrap({"_orig_mod.module.x": a, "module._orig_mod.y": b}) == {"x": a, "y": b}
    assert unwrap({}) == {}
    assert unwrap({"modules.x": a}) == {"modules.x": a}
    assert unwrap({"module.x": a})["x"] is a


# ----------------------------------------------------------------------------- canonical_key

@pytest.mark.parametrize("key,want", [
    ("proj.0.weight", (None, 0)),                        # head, matched at the start
    ("enc.layer1.0.tracker.x", (None, 0)),              # head, matched anywhere (before stripping)
    ("enc.conv1.weight", ("stem.conv.weight", 0)),
    ("enc.module.conv1.weight", ("stem.conv.weight", 0)),  # the longest prefix wins
    ("enc.enc.conv1.weight", ("enc.conv1.weight", 0)),   # one prefix, stripped once
    ("conv1.weight", ("stem.conv.weight", 0)),           # no prefix: renames still apply
    ("xconv1.weight", ("xconv1.weight", 0)),
    ("bn1.weight", ("stem.bn.weight", 0)),
    ("linear.bias", ("classifier.bias", 0)),
    ("enc.layer1.0.bn1.bn_list.0.weight", ("layer1.0.bn1.weight", 0)),
    ("enc.layer1.0.bn1.bn_list.2.weight", ("layer1.0.bn1.weight", 2)),
    ("layer1.0.bn1_adv.weight", ("layer1.0.bn1.weight", 1)),       # a fixed branch
    ("a_adv.b_adv.c", ("a.b_adv.c", 1)),                             # the first occurrence only
    ("x.bn_list.3.y_adv.z", ("x.y_adv.z", 3)),                     # the first matching pattern only
    ("mu", ("normalize.mean", 0)),                                   # in-model normalisation, after renames
    ("enc.sigma", ("normalize.std", 0)),
    ("normalizer.new_std", ("normalize.std", 0)),
    ("normalization.mean", ("normalize.mean", 0)),
])
def test_canonical_key(key, want):
    assert canonical_key(FMT, key) == want


def test_renames_apply_in_order_and_all():
    fmt = CheckpointFormat("chain", "chain", recognise=(), renames=((r"^a\.", "b."), (r"^b\.", "c."), (r"x", "y")))
    assert canonical_key(fmt, "a.x.x") == ("c.y.y", 0)
    assert canonical_key(fmt, "b.q") == ("c.q", 0)


# ----------------------------------------------------------------------------- map_state

def test_map_state_sorts_every_key():
    state = {
        "enc.conv1.weight": t(1),
        "proj.0.weight": t(2),
        "enc.layer1.0.bn1.bn_list.0.weight": t(3),
        "enc.layer1.0.bn1.bn_list.1.weight": t(4),
        "enc.layer1.0.bn1.bn_list.2.weight": t(5),
        "linear.weight": t(6),
        "mu": t(7),
        "queue": t(8),
        "enc.bn.weight": t(9),
        "enc.layer12.3.conv1.weight": t(10),
        "stemx.weight": t(11),
        "fc.weight": t(12),
        "enc.layer2.0.conv1_adv.weight": t(13),
        "enc.conv1.bias": t(14),
    }
    m = map_state(FMT, state)
    assert list(m.encoder) == ["stem.conv.weight", "layer1.0.bn1.weight", "layer1.0.bn1.adv.weight", "bn.weight",
                               "layer12.3.conv1.weight", "layer2.0.conv1.adv.weight", "stem.conv.bias"]
    assert m.encoder["layer1.0.bn1.adv.weight"] is state["enc.layer1.0.bn1.bn_list.1.weight"]
    assert m.encoder["layer1.0.bn1.weight"] is state["enc.layer1.0.bn1.bn_list.0.weight"]
    assert m.classifier == {"classifier.weight": state["linear.weight"]}
    assert m.normalize == {"normalize.mean": state["mu"]}
    assert m.dropped == ["proj.0.weight", "enc.layer1.0.bn1.bn_list.2.weight"]
    assert m.unexpected == ["queue", "stemx.weight", "fc.weight"]
    assert m.notes == []
    assert m.sources == {"stem.conv.weight": "enc.conv1.weight",
                         "layer1.0.bn1.weight": "enc.layer1.0.bn1.bn_list.0.weight",
                         "layer1.0.bn1.adv.weight": "enc.layer1.0.bn1.bn_list.1.weight", "bn.weight": "enc.bn.weight",
                         "layer12.3.conv1.weight": "enc.layer12.3.conv1.weight",
                         "layer2.0.conv1.adv.weight": "enc.layer2.0.conv1_adv.weight",
                         "stem.conv.bias": "enc.conv1.bias", "classifier.weight": "linear.weight",
                         "normalize.mean": "mu"}


def test_map_state_adversarial_branch():
    fmt = dataclasses.replace(FMT, adversarial_branch=2)
    state = {f"layer1.0.bn1.bn_list.{b}.weight": t(b) for b in range(3)}
    m = map_state(fmt, state)
    assert list(m.encoder) == ["layer1.0.bn1.weight", "layer1.0.bn1.adv.weight"]
    assert m.encoder["layer1.0.bn1.adv.weight"] is state["layer1.0.bn1.bn_list.2.weight"]
    assert m.dropped == ["layer1.0.bn1.bn_list.1.weight"]


def test_differing_copies_keep_the_first_and_say_so():
    first, second = t(1, 2), t(1, 3)
    state = {"enc.conv1.weight": first, "conv1.weight": second, "enc.layer1.0.conv1.weight": t(4)}
    m = map_state(FMT, state)
    assert m.encoder["stem.conv.weight"] is first
    assert m.sources["stem.conv.weight"] == "enc.conv1.weight"
    assert m.dropped == ["conv1.weight"]
    assert m.notes == ["conv1.weight differs from enc.conv1.weight (both map to stem.conv.weight); kept the first."]
    assert list(m.encoder) == ["stem.conv.weight", "layer1.0.conv1.weight"]  # later keys still mapped


def test_copies_of_another_shape_differ_too():
    m = map_state(FMT, {"mu": t(1, 1), "normalize.mean": t(1, 1, 1), "linear.weight": t(0), "classifier.weight": t(5)})
    assert m.notes == ["normalize.mean differs from mu (both map to normalize.mean); kept the first.",
                       "classifier.weight differs from linear.weight (both map to classifier.weight); kept the first."]
    assert torch.equal(m.normalize["normalize.mean"], t(1, 1)) and torch.equal(m.classifier["classifier.weight"], t(0))
    assert m.dropped == ["normalize.mean", "classifier.weight"]


def test_identical_copies_are_dropped_silently():
    a = t(1, 2)
    m = map_state(FMT, {"enc.conv1.weight": a, "conv1.weight": a.clone(), "linear.bias": t(3), "classifier.bias": t(3)})
    assert m.encoder == {"stem.conv.weight": a} and m.encoder["stem.conv.weight"] is a
    assert m.dropped == ["conv1.weight", "classifier.bias"]
    assert m.notes == []


# ----------------------------------------------------------------------------- key_overlap

def test_key_overlap():
    assert key_overlap(FMT, {}) == 0.0
    state = {"enc.conv1.weight": t(1), "proj.0.weight": t(1), "linear.weight": t(1), "enc.layer1.0.conv1.weight": t(1),
             "queue": t(1)}
    assert key_overlap(FMT, state) == pytest.approx(0.4, abs=1e-15)
    assert key_overlap(FMT, {"conv1.weight": t(1), "layer3.1.bn2.weight": t(1)}) == 1.0


# ----------------------------------------------------------------------------- infer_arch

def real_encoder(arch: str, width: int = 4, dual_bn: bool = False) -> SD:
    return create_model(ModelConfig(arch=arch, width=width, proj_dim=None, dual_bn=dual_bn)).encoder.state_dict()


def fake_encoder(counts: Sequence[int], width: int = 4, planes: Optional[Sequence[int]] = None, kernel: int = 3,
                 stem_bn: bool = True, final_bn: bool = False, bottleneck: bool = False) -> SD:
    """Only the keys and shapes infer_arch reads."""
    enc = {"stem.conv.weight": torch.zeros(width, 3, kernel, kernel)}
    if stem_bn:
        enc["stem.bn.weight"] = torch.zeros(width)
    planes = planes if planes is not None else [width * 2 ** i for i in range(len(counts))]
    for stage, (n, p) in enumerate(zip(counts, planes), 1):
        for j in range(n):
            enc[f"layer{stage}.{j}.conv1.weight"] = torch.zeros(p, 1, 1, 1)
            enc[f"layer{stage}.{j}.bn1.weight"] = torch.zeros(p)
            if bottleneck:
                enc[f"layer{stage}.{j}.conv3.weight"] = torch.zeros(4 * p, p, 1, 1)
    if final_bn:
        enc["bn.weight"] = torch.zeros(planes[-1])
    return enc


@pytest.mark.parametrize("arch,fmt_prefix", [("resnet18", ""), ("resnet34", ""), ("resnet50", ""),
                                             ("preact-resnet18", ""), ("preact-resnet18-v1", ""), ("wrn-16-2", ""),
                                             ("dm-preact-resnet18", "dm-"), ("dm-preact-resnet34", "dm-")])
def test_infer_arch_of_real_encoders(arch, fmt_prefix):
    fmt = dataclasses.replace(FMT, arch_prefix=fmt_prefix)
    assert infer_arch(fmt, real_encoder(arch, width=6)) == ArchGuess(arch, 6, "cifar", False)


def test_infer_arch_dual_bn_stem_and_overrides():
    enc = real_encoder("resnet18", dual_bn=True)
    assert infer_arch(FMT, enc) == ArchGuess("resnet18", 4, "cifar", True)
    pad2 = dataclasses.replace(FMT, small_stem="cifar-pad2")
    assert infer_arch(pad2, fake_encoder([2, 2, 2, 2])).stem == "cifar-pad2"
    assert infer_arch(FMT, fake_encoder([2, 2, 2, 2], kernel=7)) == ArchGuess("resnet18", 4, "imagenet", False)
    assert infer_arch(FMT, fake_encoder([2, 2, 2, 2], kernel=5), stem="cifar").stem == "cifar"
    odd = fake_encoder([9], kernel=7)
    assert infer_arch(FMT, odd, arch="anything", stem="x") == ArchGuess("anything", 4, "x", False)
    assert infer_arch(FMT, odd, arch="resnet50") == ArchGuess("resnet50", 4, "imagenet", False)


def test_infer_arch_stem_errors():
    msg = r"^no first convolution found after mapping with format 'unit'; the file is not a ResNet of that layout " \
          r"\(try --format\)\.$"
    with pytest.raises(ClrobustError, match=msg):
        infer_arch(FMT, {"layer1.0.conv1.weight": torch.zeros(4, 4, 3, 3)})
    with pytest.raises(ClrobustError, match=msg):
        infer_arch(FMT, {"stem.conv.weight": torch.zeros(4, 27)})
    with pytest.raises(ClrobustError, match=r"^first convolution is 5x5; clrobust builds 3x3 \(CIFAR\) and 7x7 "
                                            r"\(ImageNet\) stems only\.$"):
        infer_arch(FMT, fake_encoder([2, 2, 2, 2], kernel=5))


@pytest.mark.parametrize("counts,bottleneck,name", [
    ([3, 4, 6, 3], True, "resnet50"), ([3, 4, 6, 3], False, "resnet34"), ([2, 2, 2, 2], False, "resnet18")])
def test_resnet_depths(counts, bottleneck, name):
    assert infer_arch(FMT, fake_encoder(counts, bottleneck=bottleneck)).arch == name


@pytest.mark.parametrize("counts,bottleneck,text", [
    ([3, 4, 23, 3], True, "ResNet-101 (blocks per stage [3, 4, 23, 3])"),
    ([3, 8, 36, 3], True, "ResNet-152 (blocks per stage [3, 8, 36, 3])"),
    ([2, 2], False, "basic blocks [2, 2, 0, 0] (blocks per stage [2, 2, 0, 0])"),
    ([3, 4, 6], True, "bottleneck blocks [3, 4, 6, 0] (blocks per stage [3, 4, 6, 0])"),
    ([2, 2, 2, 2], True, "bottleneck blocks [2, 2, 2, 2] (blocks per stage [2, 2, 2, 2])"),
    ([2, 2, 2, 2, 2], False, "basic blocks [2, 2, 2, 2, 2] (blocks per stage [2, 2, 2, 2, 2])"),
])
def test_resnet_depths_clrobust_does_not_build(counts, bottleneck, text):
    with pytest.raises(ClrobustError, match=rf"^encoder has {re.escape(text)}; clrobust builds resnet18, resnet34 and "
                                            r"resnet50 only \(pass --arch if the guess is wrong\)\.$"):
        infer_arch(FMT, fake_encoder(counts, bottleneck=bottleneck))


def test_blocks_are_counted_per_stage_until_a_gap():
    enc = fake_encoder([2, 2, 2, 2])
    enc = {k: v for k, v in enc.items() if not k.startswith("layer2.")}
    enc["layer10.0.conv1.weight"] = torch.zeros(4, 1, 1, 1)  # not a block of layer1
    with pytest.raises(ClrobustError, match=re.escape("encoder has basic blocks [2, 0, 0, 0] ")):
        infer_arch(FMT, enc)


@pytest.mark.parametrize("counts,width,planes,final_bn,prefix,arch", [
    ([4, 4, 4], 16, [160, 320, 640], True, "", "wrn-28-10"),
    ([5, 5, 5], 16, [160, 320, 640], True, "", "wrn-34-10"),
    ([2, 2, 2], 16, [48, 96, 192], True, "", "wrn-16-3"),
    ([4, 4, 4], 16, [160, 320, 640], True, "dm-", "dm-wrn-28-10"),
    ([10, 10, 10], 16, [256, 512, 1024], True, "dm-", "dm-wrn-64-16"),
    ([2, 2, 2, 2], 8, [8, 16, 32, 64], True, "", "preact-resnet18"),
    ([2, 2, 2, 2], 8, [8, 16, 32, 64], False, "", "preact-resnet18-v1"),
    ([2, 2, 2, 2], 8, [8, 16, 32, 64], True, "dm-", "dm-preact-resnet18"),
    ([3, 4, 6, 3], 8, [8, 16, 32, 64], True, "dm-", "dm-preact-resnet34"),
])
def test_preact_archs(counts, width, planes, final_bn, prefix, arch):
    fmt = dataclasses.replace(FMT, arch_prefix=prefix)
    enc = fake_encoder(counts, width=width, planes=planes, stem_bn=False, final_bn=final_bn)
    assert infer_arch(fmt, enc) == ArchGuess(arch, width, "cifar", False)


@pytest.mark.parametrize("counts,width,planes,final_bn", [
    ([4, 4, 4], 16, [160, 320, 320], True),    # stage widths not K, 2K, 4K
    ([4, 4, 4], 16, [24, 48, 96], True),       # first stage not a multiple of the stem
    ([4, 4, 3], 16, [160, 320, 640], True),    # unequal stages
    ([4, 4, 4], 16, [0, 0, 0], True),          # no conv1 weights at all
    ([4, 4], 16, [160, 320], True),
    ([3, 4, 6, 3], 8, [8, 16, 32, 64], False),  # PreActResNet-34 needs its final BN
    ([2, 2, 2, 3], 8, [8, 16, 32, 64], True),
])
def test_preact_shapes_clrobust_does_not_build(counts, width, planes, final_bn):
    enc = fake_encoder(counts, width=width, planes=planes, stem_bn=False, final_bn=final_bn)
    if planes == [0, 0, 0]:
        enc = {k: v for k, v in enc.items() if ".conv1." not in k}
    msg = (f"pre-activation encoder with blocks per stage {counts} and stage widths {planes} (stem {width}) is "
           "neither a WideResNet wrn-D-K nor a PreActResNet-18/34; pass --arch if the guess is wrong.")
    with pytest.raises(ClrobustError, match=f"^{re.escape(msg)}$"):
        infer_arch(FMT, enc)


@pytest.mark.parametrize("counts,final_bn,prefix,arch", [([3, 4, 6, 3], True, "", "preact-resnet34"),
                                                         ([2, 2, 2, 2], False, "dm-", "dm-preact-resnet18-v1")])
def test_preact_names_clrobust_does_not_build_in_that_layout(counts, final_bn, prefix, arch):
    fmt = dataclasses.replace(FMT, arch_prefix=prefix)
    enc = fake_encoder(counts, width=8, stem_bn=False, final_bn=final_bn)
    with pytest.raises(ClrobustError, match=rf"^the encoder's shapes read as {re.escape(arch)}, which clrobust does "
                                            r"not build in the unit layout; pass --arch if the guess is wrong\.$"):
        infer_arch(fmt, enc)
