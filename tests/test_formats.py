"""Third-party checkpoint loading: every supported layout round-trips to the same features.

Each case builds a checkpoint in a source's own layout (key naming, wrappers,
top-level keys, heads) from a tiny clrobust encoder, saves it with torch.save,
loads it back through auto-detection and compares encoder features.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path
from typing import Callable, Dict, List, Sequence, Tuple

import pytest
import torch

from clrobust.checkpoints import formats
from clrobust.checkpoints.formats import CheckpointFormat, load_checkpoint
from clrobust.errors import ClrobustError
from clrobust.models import ModelConfig, adversarial_bn, build_encoder

CIFAR = ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616))
KUANGLIU_NORM = ((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010))
IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
HALF = ((0.5,) * 3, (0.5,) * 3)
ODD = ((0.3, 0.4, 0.5), (0.21, 0.22, 0.23))  # in-model buffers: values no preset has

SD = Dict[str, torch.Tensor]


# ----------------------------------------------------------------------------- helpers

def make_encoder(arch: str = "resnet18", stem: str = "cifar", dual: bool = False, seed: int = 0):
    torch.manual_seed(seed)
    enc = build_encoder(ModelConfig(arch=arch, width=4, stem=stem, dual_bn=dual))
    for name, m in enc.named_modules():
        if isinstance(m, torch.nn.BatchNorm2d):  # non-trivial statistics so BN mix-ups show
            with torch.no_grad():
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0, 0.2)
                m.running_mean.normal_(0, 0.3)
                m.running_var.uniform_(0.5, 2.0)
    return enc.eval()


def rename(sd: SD, rules: Sequence[Tuple[str, str]], prefix: str = "") -> SD:
    out = {}
    for k, v in sd.items():
        for pat, rep in rules:
            k = re.sub(pat, rep, k)
        out[prefix + k] = v.clone()
    return out


def features(enc, x: torch.Tensor, norm=None, adv: bool = False) -> torch.Tensor:
    if norm is not None:
        x = (x - torch.tensor(norm[0]).view(1, 3, 1, 1)) / torch.tensor(norm[1]).view(1, 3, 1, 1)
    with torch.no_grad(), adversarial_bn(enc, adv):
        return enc(x)


def head(prefix: str, dims=((16, 32), (8, 16)), idx=(0, 2)) -> SD:
    out = {}
    for i, (o, n) in zip(idx, dims):
        out[f"{prefix}{i}.weight"] = torch.randn(o, n)
        out[f"{prefix}{i}.bias"] = torch.randn(o)
    return out


def linear(prefix: str, n_in: int, n_out: int = 10) -> SD:
    return {f"{prefix}weight": torch.randn(n_out, n_in), f"{prefix}bias": torch.randn(n_out)}


KUANG = [(r"^stem\.conv\.", "conv1."), (r"^stem\.bn\.", "bn1.")]
TV = KUANG + [(r"\.shortcut\.", ".downsample.")]
LIGHTLY = [(r"^stem\.conv\.", "0."), (r"^stem\.bn\.", "1."), (r"^layer1\.", "4."), (r"^layer2\.", "5."),
           (r"^layer3\.", "6."), (r"^layer4\.", "7."), (r"\.shortcut\.", ".downsample.")]
LIGHTLY_CIFAR = [(r"^stem\.conv\.", "0."), (r"^stem\.bn\.", "1."), (r"^layer1\.", "2."), (r"^layer2\.", "3."),
                 (r"^layer3\.", "4."), (r"^layer4\.", "5.")]
OPT = {"state": {}, "param_groups": [{"lr": 0.1, "params": [0, 1]}]}


def bn_names(enc) -> List[str]:
    return [n for n, m in enc.named_modules() if isinstance(m, torch.nn.BatchNorm2d) and not n.endswith(".adv")]


def acl_keys(enc, extra_branch: bool = False) -> SD:
    """ACL/AdvCL naming: bn_list.K copies, downsample.conv / downsample.bn."""
    bns = set(bn_names(enc))
    out = {}
    for k, v in enc.state_dict().items():
        mod, _, leaf = k.rpartition(".")
        if mod.endswith(".adv") and mod[:-4] in bns:
            k = f"{mod[:-4]}.bn_list.1.{leaf}"
        elif mod in bns:
            k = f"{mod}.bn_list.0.{leaf}"
            if extra_branch:
                out[f"{mod}.bn_list.2.{leaf}"] = torch.rand_like(v.float()).to(v.dtype) + 0.5
        out[k] = v.clone()
    rules = [(r"^stem\.conv\.", "conv1."), (r"^stem\.bn\.", "bn1."), (r"\.shortcut\.0\.", ".downsample.conv."),
             (r"\.shortcut\.1\.", ".downsample.bn.")]
    return rename(out, rules)


def clae_keys(enc) -> SD:
    """CLAE naming: bn1_adv copies, shortcut.0 conv, shortcut_bn / shortcut_bn_adv."""
    out = {}
    for k, v in enc.state_dict().items():
        k = re.sub(r"\.adv\.(\w+)$", r"_adv.\1", k)
        k = re.sub(r"\.shortcut\.1(_adv)?\.", r".shortcut_bn\1.", k)
        k = re.sub(r"^stem\.conv\.", "conv1.", k)
        k = re.sub(r"^stem\.bn", "bn1", k)
        out[k] = v.clone()
    return out


# Each case: (name, expected format, arch, stem, dual, builder(enc) -> (checkpoint, norm, has classifier))
Case = Tuple[str, str, str, str, bool, Callable]


def _supcontrast(enc):
    sd = rename(enc.state_dict(), KUANG, "encoder.")
    return {"opt": argparse.Namespace(model="resnet18", lr=0.05), "model": {**sd, **head("head.")},
            "optimizer": OPT, "epoch": 100}, KUANGLIU_NORM, False


def _supcontrast_multigpu(enc):
    sd = rename(enc.state_dict(), KUANG, "encoder.module.")
    return {"opt": argparse.Namespace(), "model": {**sd, **head("head.")}, "optimizer": OPT,
            "epoch": 1}, KUANGLIU_NORM, False


def _supce(enc):
    sd = rename(enc.state_dict(), KUANG, "module.encoder.")
    return {"opt": argparse.Namespace(), "model": {**sd, **linear("module.fc.", enc.feature_dim)},
            "optimizer": OPT, "epoch": 1}, KUANGLIU_NORM, True


def _solo(enc):
    sd = rename(enc.state_dict(), TV, "backbone.")
    mom = rename(enc.state_dict(), TV, "momentum_backbone.")
    proj = {**head("projector."), "projector.1.running_mean": torch.zeros(16), "projector.1.weight": torch.ones(16)}
    return {"epoch": 3, "global_step": 30, "pytorch-lightning_version": "2.1.0",
            "state_dict": {**sd, **mom, **proj, **linear("classifier.", enc.feature_dim)}}, CIFAR, True


def _deacl(enc):
    sd = rename(enc.state_dict(), TV, "backbone.")
    sd["backbone.normalize.mean"] = torch.tensor(ODD[0]).view(1, 3, 1, 1)
    sd["backbone.normalize.std"] = torch.tensor(ODD[1]).view(1, 3, 1, 1)
    proj = {**head("projector."), "projector.1.running_mean": torch.zeros(16)}
    return {"epoch": 1, "state_dict": {**sd, **proj, **linear("classifier.", enc.feature_dim)}}, ODD, True


def _lightly(enc):
    sd = rename(enc.state_dict(), LIGHTLY, "backbone.")
    for k in list(sd):  # SplitBatchNorm: 2 splits whose mean is the true statistic
        if k.endswith(("running_mean", "running_var")):
            d = 0.1 * torch.rand_like(sd[k])
            sd[k] = torch.cat([sd[k] + d, sd[k] - d])
    return {"epoch": 2, "state_dict": {**sd, **head("projection_head.layers."),
                                       **linear("online_classifier.classification_head.", enc.feature_dim)}}, \
        IMAGENET, True


def _lightly_cifar(enc):
    sd = rename(enc.state_dict(), LIGHTLY_CIFAR, "backbone.")
    return {"epoch": 2, "state_dict": {**sd, **head("projection_head.layers.")}}, IMAGENET, False


def _sthalles(enc):
    sd = rename(enc.state_dict(), TV, "backbone.")
    return {"epoch": 100, "arch": "resnet18", "state_dict": {**sd, **head("backbone.fc.")},
            "optimizer": OPT}, None, False


def _spijkervet(enc):
    sd = rename(enc.state_dict(), TV, "encoder.")
    return {**sd, **head("projector.")}, None, False


def _spijkervet_lightning(enc):
    sd = rename(enc.state_dict(), TV, "encoder.")
    dup = rename(enc.state_dict(), TV, "model.encoder.")
    return {"epoch": 1, "state_dict": {**sd, **dup, **head("model.projector.")}}, None, False


def _moco(enc):
    q = rename(enc.state_dict(), TV, "module.encoder_q.")
    k = rename(enc.state_dict(), TV, "module.encoder_k.")
    extra = {**head("module.encoder_q.fc.", dims=((16, 128), (8, 16))), "module.queue": torch.randn(8, 64),
             "module.queue_ptr": torch.zeros(1, dtype=torch.long)}
    return {"epoch": 200, "arch": "resnet50", "state_dict": {**q, **k, **extra}, "optimizer": OPT}, IMAGENET, False


def _robustbench(enc):
    sd = rename(enc.state_dict(), KUANG + [(r"^", "model.")])
    sd["normalize.mean"] = torch.tensor(ODD[0]).view(1, 3, 1, 1)
    sd["normalize.std"] = torch.tensor(ODD[1]).view(1, 3, 1, 1)
    return {**sd, **linear("model.linear.", enc.feature_dim)}, ODD, True


def _robustbench_mu(enc):
    sd = rename(enc.state_dict(), TV, "module.")
    sd["module.mu"] = torch.tensor(ODD[0]).view(1, 3, 1, 1)
    sd["module.sigma"] = torch.tensor(ODD[1]).view(1, 3, 1, 1)
    return {"state_dict": {**sd, **linear("module.fc.", enc.feature_dim)}}, ODD, True


def _madry(enc):
    sd = rename(enc.state_dict(), KUANG, "module.model.")
    att = rename(enc.state_dict(), KUANG, "module.attacker.model.")
    norm = {}
    for p in ("module.normalizer.", "module.attacker.normalizer."):
        norm[p + "new_mean"] = torch.tensor(ODD[0]).view(3, 1, 1)
        norm[p + "new_std"] = torch.tensor(ODD[1]).view(3, 1, 1)
    cls = linear("module.model.linear.", enc.feature_dim)
    return {"model": {**sd, **att, **norm, **cls}, "optimizer": OPT, "schedule": None, "epoch": 150}, ODD, True


def _rocl(enc):
    sd = rename(enc.state_dict(), KUANG, "module.")
    return {"epoch": 1, "acc": 0.5, "model": sd, "optimizer_state": OPT,
            "rng_state": torch.zeros(8, dtype=torch.uint8)}, None, False


def _acl(enc):
    sd = acl_keys(enc)
    sd["normalize.mean"] = torch.tensor(IMAGENET[0]).view(1, 3, 1, 1)
    sd["normalize.std"] = torch.tensor(IMAGENET[1]).view(1, 3, 1, 1)
    proj = {**head("fc.fc", idx=(1, 2)), "fc.bn1.bn_list.0.weight": torch.ones(16)}
    return {"epoch": 10, "state_dict": {**sd, **proj}, "optim": OPT}, IMAGENET, False


def _advcl(enc):
    sd = rename(acl_keys(enc, extra_branch=True), [], "module.")
    heads = {**head("module.head_proj."), **head("module.head_pred.")}
    return {"model": {**sd, **heads}, "epoch": 5, "rng_state": torch.zeros(4, dtype=torch.uint8)}, None, False


def _clae_simclr(enc):
    return {**rename(clae_keys(enc), [], "encoder."), **head("projector.")}, HALF, False


def _clae_plain(enc):
    sd = clae_keys(enc)
    return {"net": {**sd, **linear("linear.", enc.feature_dim, 128)}, "acc": 0.1, "epoch": 3}, KUANGLIU_NORM, False


def _clnet(enc):
    sd = rename(enc.state_dict(), KUANG, "encoder.encoder.")
    return {**sd, **head("head.", dims=((16, 128), (8, 16)))}, None, False


def _evalnet(enc):
    sd = rename(enc.state_dict(), KUANG, "encoder.encoder.")
    return {**sd, **linear("head.", enc.feature_dim)}, None, True


def _kuangliu_safetensors(enc):
    return {**rename(enc.state_dict(), KUANG), **linear("linear.", enc.feature_dim)}, None, True


CASES: List[Case] = [
    ("supcontrast", "supcontrast", "resnet18", "cifar", False, _supcontrast),
    ("supcontrast-multigpu", "supcontrast", "resnet18", "cifar", False, _supcontrast_multigpu),
    ("supce", "supcontrast", "resnet34", "cifar", False, _supce),
    ("solo-learn", "solo-learn", "resnet18", "cifar-pad2", False, _solo),
    ("deacl", "deacl", "resnet18", "cifar-pad2", False, _deacl),
    ("lightly", "lightly", "resnet18", "imagenet", False, _lightly),
    ("lightly-cifar", "lightly-cifar", "resnet18", "cifar", False, _lightly_cifar),
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


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_format_roundtrip(case: Case, tmp_path: Path, images: torch.Tensor) -> None:
    name, fmt, arch, stem, dual, build = case
    enc = make_encoder(arch, stem, dual)
    ckpt, norm, has_classifier = build(enc)
    path = _save(ckpt, tmp_path / FILENAMES.get(name, f"{name}.pt"))

    net, report = load_checkpoint(path)

    assert report.format == fmt
    assert (report.arch, report.stem, report.width, report.dual_bn) == (arch, stem, 4, dual)
    assert report.missing == []
    assert report.has_classifier == has_classifier
    expected_norm = None if norm is None else list(norm[0]) + list(norm[1])
    got_norm = None if report.normalize["mean"] is None else report.normalize["mean"] + report.normalize["std"]
    if expected_norm is None:
        assert got_norm is None
    else:
        assert got_norm == pytest.approx(expected_norm, abs=1e-6)
    with torch.no_grad():
        got = net.features(images)
    want = features(enc, images, norm)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    assert net.projector is None
    if has_classifier:
        cls_key = next(k for k in _flat(ckpt) if re.search(r"(linear|fc|classifier|head|classification_head)"
                                                              r"\.weight$", k))
        torch.testing.assert_close(net.classifier.weight, _flat(ckpt)[cls_key])


def _flat(ckpt) -> SD:
    for key in ("state_dict", "model", "net"):
        if isinstance(ckpt.get(key), dict):
            return ckpt[key]
    return ckpt


def test_heads_are_dropped_and_reported(tmp_path: Path) -> None:
    enc = make_encoder()
    ckpt, _, _ = _supcontrast(enc)
    _, report = load_checkpoint(_save(ckpt, tmp_path / "last.pth"))
    assert sorted(report.dropped) == ["head.0.bias", "head.0.weight", "head.2.bias", "head.2.weight"]
    assert report.unexpected == []
    _, report = load_checkpoint(_save(_moco(make_encoder("resnet50", "imagenet"))[0], tmp_path / "moco.pt"))
    assert "queue" in report.dropped and any(k.startswith("encoder_k.") for k in report.dropped)


@pytest.mark.parametrize("builder", [_acl, _clae_simclr, _advcl], ids=["acl", "clae", "advcl"])
def test_dual_bn_clean_by_default_adversarial_on_request(builder, tmp_path: Path, images: torch.Tensor) -> None:
    enc = make_encoder(dual=True)
    ckpt, norm, _ = builder(enc)
    path = _save(ckpt, tmp_path / "dual.pt")
    clean, _ = load_checkpoint(path)
    adv, report = load_checkpoint(path, adversarial_bn=True)
    assert report.adversarial_bn
    with torch.no_grad():
        f_clean, f_adv = clean.features(images), adv.features(images)
    torch.testing.assert_close(f_clean, features(enc, images, norm, adv=False), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(f_adv, features(enc, images, norm, adv=True), atol=1e-5, rtol=1e-5)
    assert (f_clean - f_adv).abs().max() > 1e-3


def test_adversarial_bn_on_single_bn_checkpoint_is_an_error(tmp_path: Path) -> None:
    path = _save(_supcontrast(make_encoder())[0], tmp_path / "last.pth")
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
    enc = make_encoder()
    sd = rename(enc.state_dict(), KUANG, "encoder.")
    sd = {k.replace("conv1.", "first_conv."): v for k, v in sd.items()}
    with pytest.raises(ClrobustError, match="supcontrast"):
        load_checkpoint(_save({"model": sd}, tmp_path / "near.pt"))


def test_missing_encoder_weights_refused_unless_not_strict(tmp_path: Path) -> None:
    ckpt, _, _ = _supcontrast(make_encoder())
    del ckpt["model"]["encoder.layer3.0.conv2.weight"]
    path = _save(ckpt, tmp_path / "partial.pth")
    with pytest.raises(ClrobustError, match=r"missing.*layer3\.0\.conv2\.weight.*--allow-missing"):
        load_checkpoint(path)
    _, report = load_checkpoint(path, strict=False)
    assert report.missing == ["layer3.0.conv2.weight"]


def test_overrides_normalize_arch_and_format(tmp_path: Path, images: torch.Tensor) -> None:
    enc = make_encoder()
    path = _save(_supcontrast(enc)[0], tmp_path / "last.pth")
    net, report = load_checkpoint(path, normalize="none", arch="resnet18", format="supcontrast")
    assert report.normalize["mean"] is None and report.normalize["origin"].startswith("user")
    torch.testing.assert_close(net.features(images).detach(), features(enc, images), atol=1e-5, rtol=1e-5)
    net, _ = load_checkpoint(path, normalize="0.1,0.2,0.3,0.4,0.5,0.6")
    assert net.normalize.std.flatten().tolist() == pytest.approx([0.4, 0.5, 0.6])
    with pytest.raises(ClrobustError, match="preset"):
        load_checkpoint(path, normalize="cifar11")
    with pytest.raises(ClrobustError, match="do not fit"):
        load_checkpoint(path, arch="resnet50")


def test_register_format_extends_detection(tmp_path: Path, images: torch.Tensor) -> None:
    enc = make_encoder()
    sd = rename(enc.state_dict(), KUANG, "net.")
    sd.update(head("net.proj."))
    path = _save({"weights": sd, "epoch": 1}, tmp_path / "mine.pt")
    with pytest.raises(ClrobustError):
        load_checkpoint(path)
    formats.register_format(CheckpointFormat(
        name="my-lab", source="test lab", recognise=(r"^net\.conv1\.weight$", r"^net\.proj\."),
        prefixes=("net.",), heads=(r"^net\.proj\.",), renames=formats.KUANGLIU, normalize="cifar10"))
    try:
        net, report = load_checkpoint(_save(sd, tmp_path / "mine_flat.pt"))
        assert report.format == "my-lab" and len(report.dropped) == 4
        torch.testing.assert_close(net.features(images).detach(), features(enc, images, CIFAR), atol=1e-5,
                                   rtol=1e-5)
    finally:
        formats.unregister_format("my-lab")


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
    good = _save(_supcontrast(make_encoder())[0], tmp_path / "good.pth")
    trunc = tmp_path / "trunc.pth"
    trunc.write_bytes(good.read_bytes()[:2000])
    for path, pattern in [(raw, "trust-checkpoint"), (html, "HTML page"), (trunc, "corrupt")]:
        with pytest.raises(ClrobustError, match=pattern) as info:
            load_checkpoint(path)
        assert "\n" not in str(info.value)
    assert not target.exists()


def test_trust_allows_full_unpickling(tmp_path: Path) -> None:
    enc = make_encoder()
    ckpt, _, _ = _rocl(enc)
    ckpt["extra"] = torch.nn.Identity()  # a pickled module: refused without trust
    path = _save(ckpt, tmp_path / "rocl.t7")
    with pytest.raises(ClrobustError, match="torch.nn.modules.linear.Identity"):
        load_checkpoint(path)
    _, report = load_checkpoint(path, trust=True)
    assert report.format == "rocl"


def test_inspect_and_convert_cli(tmp_path: Path, images: torch.Tensor) -> None:
    import json

    from click.testing import CliRunner

    from clrobust.cli import cli
    from clrobust.loading import load_model

    enc = make_encoder()
    path = _save(_supcontrast(enc)[0], tmp_path / "last.pth")
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
    want = features(enc, images, KUANGLIU_NORM)
    torch.testing.assert_close(loaded.network.features(images).detach(), want, atol=1e-5, rtol=1e-5)
    direct = load_model(str(path))  # non-native files go through load_checkpoint
    torch.testing.assert_close(direct.network.features(images).detach(), want, atol=1e-5, rtol=1e-5)
    assert direct.metadata["source_format"] == "supcontrast"


def test_convert_keeps_both_batch_norms(tmp_path: Path, images: torch.Tensor) -> None:
    from clrobust.loading import load_model

    enc = make_encoder(dual=True)
    path = _save(_clae_simclr(enc)[0], tmp_path / "clae_epoch_1.pt")
    from clrobust.cli import main

    main(["convert", str(path), str(tmp_path / "clae")])
    adv = load_model(str(tmp_path / "clae.safetensors"), adversarial_bn=True)
    torch.testing.assert_close(adv.network.features(images).detach(), features(enc, images, HALF, adv=True),
                               atol=1e-5, rtol=1e-5)


def test_inspect_groups_dropped_keys_under_their_shared_prefix():
    from clrobust.cli_checkpoints import _grouped

    keys = [f"model.sub_block1.layer.{i}.bn1.weight" for i in range(5)] + ["fc.weight", "fc.bias"]
    assert _grouped(keys) == ["model.sub_block1.layer.* (5 keys)", "fc.weight", "fc.bias"]
    heads = [f"projector.{i}.weight" for i in range(3)] + ["projector.bn.running_mean", "projector.bn.bias"]
    assert _grouped(heads) == ["projector.* (5 keys)"]
