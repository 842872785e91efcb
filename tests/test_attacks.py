"""eps parsing, attacks respect eps and [0, 1], seeds reproduce, global RNG restored."""

import pytest
import torch
from conftest import tiny_network

from clrobust.attacks import AttackSpec, attack_batch, format_eps, parse_eps, parse_eps_list
from clrobust.errors import ClrobustError


@pytest.mark.parametrize("text,value", [("8/255", 8 / 255), ("0.0314", 0.0314), (" 4 / 255 ", 4 / 255),
                                        ("0", 0.0), (0.5, 0.5)])
def test_parse_eps(text, value):
    assert parse_eps(text) == pytest.approx(value)


@pytest.mark.parametrize("text", ["8", "abc", "-0.1", "1/0", "nan", "8/255/2"])
def test_parse_eps_rejects(text):
    with pytest.raises(ClrobustError, match="eps"):
        parse_eps(text)


def test_eps_list_and_format():
    assert parse_eps_list("2/255,4/255,8/255") == pytest.approx([2 / 255, 4 / 255, 8 / 255])
    assert format_eps(8 / 255) == "8/255" and format_eps(0.5) == "0.5"
    assert parse_eps("1.5", norm="L2") == 1.5


@pytest.mark.parametrize("name", ["fgsm", "pgd", "pgd-l2", "apgd", "rep"])
def test_perturbation_within_eps(name):
    net = tiny_network()
    x = torch.rand(6, 3, 32, 32)
    with torch.no_grad():
        y = net(x).argmax(1)  # correctly classified points, so every attack has work to do
    eps = 0.5 if name == "pgd-l2" else 8 / 255
    spec = AttackSpec(name, eps, steps=3, seed=1)
    state = torch.get_rng_state()
    adv = attack_batch(spec, net, x, y)
    assert torch.equal(torch.get_rng_state(), state)  # caller's RNG untouched
    assert adv.shape == x.shape and adv.min() >= 0 and adv.max() <= 1
    d = (adv - x).flatten(1)
    if name == "pgd-l2":
        assert d.norm(dim=1).max() <= eps + 1e-5
    else:
        assert d.abs().max() <= eps + 1e-6
    assert d.abs().max() > 0
    assert torch.equal(adv, attack_batch(spec, net, x, y))  # seeded: reproducible


def test_pgd_lowers_accuracy_more_than_noise():
    net = tiny_network()
    x = torch.rand(32, 3, 32, 32)
    with torch.no_grad():
        y = net(x).argmax(1)  # the model is right on every point
    adv = attack_batch(AttackSpec("pgd", 8 / 255, steps=5), net, x, y)
    with torch.no_grad():
        assert (net(adv).argmax(1) == y).float().mean() < 0.5


def test_unknown_attack():
    with pytest.raises(ClrobustError, match="unknown attack"):
        AttackSpec("cw")
