"""Every scheme x scenario trains a few steps; checkpoints reload exactly; runs reproduce and resume."""

import csv

import pytest
import torch

from clrobust.checkpoints import load_network
from clrobust.errors import ClrobustError
from clrobust.models import adversarial_bn
from clrobust.train import TrainConfig, Trainer
from clrobust.train.losses import nt_xent

TINY = dict(width=4, proj_dim=16, n_train=32, batch_size=16, epochs=1, classifier_epochs=1,
            eval_samples=8, eval_steps=1, attack_steps=2)

COMBOS = [(s, c, "pgd") for s in ("simclr", "supcon") for c in ("st", "at", "pat", "fat")] + \
         [("supervised", c, "pgd") for c in ("st", "at", "fat")] + [("simclr", "at", "clae"), ("supcon", "pat", "clae")]


@pytest.mark.parametrize("scheme,scenario,method", COMBOS)
def test_every_combination_trains_and_reloads(tmp_path, scheme, scenario, method):
    cfg = TrainConfig(scheme=scheme, scenario=scenario, adv_method=method, seed=3, **TINY)
    trainer = Trainer(cfg, tmp_path / "m", progress=False)
    meta = trainer.run()
    losses = [h["loss"] for h in trainer.history if h["phase"] != "linear-probe"]
    assert losses and all(torch.isfinite(torch.tensor(losses)))
    assert 0 <= meta["metrics"]["pgd20_8_255_accuracy"] <= 1
    net, saved = load_network(tmp_path / "m.safetensors")
    assert saved["training"]["scheme"] == scheme and saved["training"]["scenario"] == scenario
    assert "torch" in saved["versions"] and saved["training"]["seed"] == 3
    x = torch.rand(4, 3, 32, 32)
    trainer.net.eval()
    with torch.no_grad():
        assert torch.allclose(net(x), trainer.net(x), atol=1e-6)
    assert not (tmp_path / "m.state.pt").exists()


@pytest.mark.parametrize("arch", ["wrn-10-1", "preact-resnet18"])
def test_preactivation_architectures_train_and_reload(tmp_path, arch, one_thread):
    cfg = TrainConfig(scheme="simclr", scenario="at", arch=arch, seed=1, **TINY)
    trainer = Trainer(cfg, tmp_path / "m", progress=False)
    trainer.run()
    net, saved = load_network(tmp_path / "m.safetensors")
    assert net.config.arch == arch and saved["training"]["arch"] == arch
    x = torch.rand(2, 3, 32, 32)
    trainer.net.eval()
    with torch.no_grad():
        assert torch.allclose(net(x), trainer.net(x), atol=1e-6)


def test_nonsense_combinations_are_refused():
    with pytest.raises(ClrobustError, match="does not apply to 'supervised'"):
        TrainConfig(scheme="supervised", scenario="pat")
    with pytest.raises(ClrobustError, match="clae"):
        TrainConfig(scheme="supervised", scenario="at", adv_method="clae")
    with pytest.raises(ClrobustError, match="clae"):
        TrainConfig(scheme="simclr", scenario="st", adv_method="clae")
    with pytest.raises(ClrobustError, match="--augment"):
        TrainConfig(scheme="supcon", augment="jitter")


def test_augment_defaults_and_choice_are_used_and_recorded(tmp_path):
    assert TrainConfig(scheme="supcon").augment == "simclr"
    assert TrainConfig(scheme="supervised").augment == "crop-flip"
    cfg = dict(scheme="supcon", scenario="st", seed=5, **TINY)
    Trainer(TrainConfig(**cfg), tmp_path / "a", progress=False).run()
    Trainer(TrainConfig(**cfg, augment="crop-flip"), tmp_path / "b", progress=False).run()
    assert _curve(tmp_path / "a.history.csv") != _curve(tmp_path / "b.history.csv")
    _, saved = load_network(tmp_path / "b.safetensors")
    assert saved["training"]["augment"] == "crop-flip"


def _curve(path):
    with open(path) as fh:
        return [row["loss"] for row in csv.DictReader(fh)]


def test_same_seed_same_loss_curve(tmp_path):
    cfg = dict(scheme="simclr", scenario="at", seed=7, **{**TINY, "epochs": 2})
    Trainer(TrainConfig(**cfg), tmp_path / "a", progress=False).run()
    Trainer(TrainConfig(**cfg), tmp_path / "b", progress=False).run()
    assert _curve(tmp_path / "a.history.csv") == _curve(tmp_path / "b.history.csv")
    Trainer(TrainConfig(**{**cfg, "seed": 8}), tmp_path / "c", progress=False).run()
    assert _curve(tmp_path / "a.history.csv") != _curve(tmp_path / "c.history.csv")


def test_interrupted_run_resumes_to_the_same_result(tmp_path):
    cfg = dict(scheme="supervised", scenario="st", seed=1, **{**TINY, "epochs": 3})
    Trainer(TrainConfig(**cfg), tmp_path / "full", progress=False).run()

    class Stop(Exception):
        pass

    t = Trainer(TrainConfig(**cfg), tmp_path / "cut", progress=False)
    orig = t._supervised_step
    calls = {"n": 0}

    def step(*a):
        calls["n"] += 1
        if calls["n"] == 4:  # during epoch 2 (2 batches per epoch)
            raise Stop
        return orig(*a)

    t._supervised_step = step
    with pytest.raises(Stop):
        t.run()
    assert (tmp_path / "cut.state.pt").exists()
    Trainer(TrainConfig(**cfg), tmp_path / "cut", progress=False).run(resume=True)
    assert _curve(tmp_path / "cut.history.csv") == _curve(tmp_path / "full.history.csv")
    a, _ = load_network(tmp_path / "full.safetensors")
    b, _ = load_network(tmp_path / "cut.safetensors")
    for (k, va), vb in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(va, vb), k


def test_clae_perturbation_raises_batch_loss_and_respects_eps(tmp_path):
    cfg = TrainConfig(scheme="simclr", scenario="at", adv_method="clae", seed=0, **{**TINY, "attack_steps": 1})
    t = Trainer(cfg, tmp_path / "c", progress=False)
    from clrobust.data import load_dataset, to_float

    t.train_data = load_dataset("cifar10-mini", "train").subset(32)
    t.net = t._build()
    t.net.train()
    x = to_float(t.train_data.images[:16])
    from clrobust.attacks import pgd_maximize
    from clrobust.train.trainer import frozen_bn_stats

    net = t.net
    with frozen_bn_stats(net):
        z1 = net.project(x).detach()
        with adversarial_bn(net):
            loss = lambda xa: nt_xent(z1, net.project(xa), cfg.temperature)  # noqa: E731
            v2 = x.flip(3)
            adv = pgd_maximize(loss, v2, cfg.eps, cfg.attack_alpha, 1, random_start=False)
            assert loss(adv) > loss(v2)
    assert (adv - v2).abs().max() <= cfg.eps + 1e-6
    assert cfg.attack_alpha == pytest.approx(cfg.eps)  # one FGSM step of size eps
    # The checkpoint keeps both BNs; the default load uses the clean one.
    assert any(".adv." in k for k in net.state_dict())
