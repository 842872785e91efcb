"""eps parsing, AttackSpec, the attack builders, and every attack against a literal loop written here."""

import re
from typing import Callable, Optional

import pytest
import torch
import torch.nn.functional as F
import torchattacks as ta
from conftest import tiny_network
from torch import nn

from clrobust.attacks import (
    AttackSpec,
    _Logits,
    attack_batch,
    format_eps,
    parse_eps,
    parse_eps_list,
    pgd_maximize,
    representation_attack,
    seeded,
    torchattacks_attack,
)
from clrobust.errors import ClrobustError

pytestmark = pytest.mark.usefixtures("one_thread")


def re_text(text: object) -> str:
    """The message's ``{text!r}``, as a regex."""
    return re.escape(repr(text))


# ---------------------------------------------------------------- eps parsing and formatting

@pytest.mark.parametrize("text,value", [("8/255", 8 / 255), ("0.0314", 0.0314), (" 4 / 255 ", 4 / 255),
                                        ("0", 0.0), (0.5, 0.5), ("1", 1.0), (1, 1.0), (0, 0.0),
                                        ("8\t/\n255", 8 / 255), ("1e-2", 0.01), (".5", 0.5), ("255/255", 1.0),
                                        ("2.5/255", 2.5 / 255), ("0.5/2", 0.25)])
def test_parse_eps(text, value):
    got = parse_eps(text)
    assert got == pytest.approx(value, rel=1e-15, abs=0) and isinstance(got, float)


@pytest.mark.parametrize("text", ["abc", "1/0", "8/255/2", "", "./2", "8/255x", "0/0"])
def test_parse_eps_rejects_non_numbers(text):
    with pytest.raises(ClrobustError, match=rf"^bad eps {re_text(text)}: give a number such as 8/255 or 0\.0314\.$"):
        parse_eps(text)


@pytest.mark.parametrize("text,norm", [("-0.1", "Linf"), ("nan", "Linf"), ("-0.1", "L2"), ("inf", "L2"),
                                       (-0.5, "L2"), (float("inf"), "L2")])
def test_parse_eps_rejects_negative_or_infinite(text, norm):
    with pytest.raises(ClrobustError, match=rf"^bad eps {re_text(text)}: it must be a finite number >= 0, "
                                            r"such as 8/255\.$"):
        parse_eps(text, norm)


@pytest.mark.parametrize("text", ["8", "1.0001", 2, "256/255"])
def test_parse_eps_rejects_linf_above_one(text):
    with pytest.raises(ClrobustError, match=rf"^bad eps {re_text(text)}: inputs are in \[0, 1\], so an L-inf eps "
                                            rf"above 1 means nothing; did you mean {re.escape(str(text))}/255\?$"):
        parse_eps(text)
    assert parse_eps(text, norm="L2") == pytest.approx(float(eval(str(text))))



def test_eps_list():
    assert parse_eps_list("2/255,4/255,8/255") == pytest.approx([2 / 255, 4 / 255, 8 / 255], rel=1e-15)
    assert parse_eps_list(" 2/255, ,4/255,") == pytest.approx([2 / 255, 4 / 255], rel=1e-15)
    assert parse_eps_list("0.5,1.5", "L2") == [0.5, 1.5]
    assert parse_eps_list("") == []
    with pytest.raises(ClrobustError, match="L-inf eps above 1"):
        parse_eps_list("0.5,1.5")


@pytest.mark.parametrize("eps,text", [(8 / 255, "8/255"), (1 / 255, "1/255"), (1.0, "255/255"), (0.5, "0.5"),
                                      (0, "0"), (0.0, "0"), ((8 + 5e-7) / 255, "8/255"),
                                      ((8 + 5e-6) / 255, "0.0313726"), (0.25, "0.25"), (1.5, "1.5"),
                                      (1e-9, "1e-09"), (2.5 / 255, "0.00980392")])
def test_format_eps(eps, text):
    assert format_eps(eps) == text


# ---------------------------------------------------------------- AttackSpec

def test_attack_spec_defaults_and_alpha():
    spec = AttackSpec()
    assert (spec.name, spec.eps, spec.steps, spec.random_start, spec.seed, spec.n_classes, spec.norm) == \
        ("pgd", 8 / 255, 10, True, 0, 10, "Linf")
    assert spec.alpha == 2.5 * (8 / 255) / 10
    assert AttackSpec("pgd", 0.1, steps=4).alpha == 2.5 * 0.1 / 4
    assert AttackSpec("fgsm", 0.1, steps=4).alpha == 0.1
    assert AttackSpec("pgd", 0.1, steps=4, alpha=0.01).alpha == 0.01
    assert AttackSpec("pgd", 0.1, steps=1).steps == 1
    assert AttackSpec("pgd-l2", 0.5).norm == "L2"
    assert AttackSpec("apgd", 0.5, norm="L2").norm == "L2" and AttackSpec("apgd").norm == "Linf"
    assert AttackSpec("autoattack", norm="Linf").norm == "Linf"


def test_attack_spec_to_dict():
    assert AttackSpec("pgd", 4 / 255, steps=5, seed=2).to_dict() == {
        "name": "pgd", "eps": 4 / 255, "steps": 5, "alpha": 2.5 * (4 / 255) / 5, "random_start": True, "seed": 2,
        "n_classes": 10, "norm": "Linf", "batch_size": None, "eps_text": "4/255", "threat_model": "II (end-to-end)"}
    d = AttackSpec("rep", 0.1, steps=2, alpha=0.05, random_start=False).to_dict()
    assert d["threat_model"] == "I (label-free, encoder)" and d["eps_text"] == "0.1" and d["alpha"] == 0.05
    assert d["random_start"] is False


@pytest.mark.parametrize("kwargs,msg", [
    (dict(name="cw"), r"^unknown attack 'cw'; use one of: none, fgsm, pgd, pgd-l2, apgd, autoattack, rep, noise\.$"),
    (dict(name="pgd", norm="l2"), r"^unknown norm 'l2'; use Linf or L2\.$"),
    (dict(name="pgd-l2", norm="L1"), r"^unknown norm 'L1'; use Linf or L2\.$"),
    (dict(name="pgd", norm="L2"), r"^attack 'pgd' is L-inf; for L2 use pgd-l2, apgd or autoattack\.$"),
    (dict(name="fgsm", norm="L2"), r"^attack 'fgsm' is L-inf; for L2 use pgd-l2, apgd or autoattack\.$"),
    (dict(name="rep", norm="L2"), r"^attack 'rep' is L-inf; for L2 use pgd-l2, apgd or autoattack\.$"),
    (dict(name="cw", norm="L2"), r"^unknown attack 'cw'"),
    (dict(name="pgd", steps=0), r"^--steps must be at least 1, got 0\.$"),
    (dict(name="fgsm", steps=-3), r"^--steps must be at least 1, got -3\.$"),
])
def test_attack_spec_errors(kwargs, msg):
    with pytest.raises(ClrobustError, match=msg):
        AttackSpec(**kwargs)


def test_seeded_draws_and_restores():
    torch.manual_seed(123)
    state = torch.get_rng_state()
    with seeded(7):
        got = torch.rand(5)
    assert torch.equal(torch.get_rng_state(), state)
    torch.manual_seed(7)
    assert torch.equal(got, torch.rand(5))


# ---------------------------------------------------------------- the builders

def _net64(projector: bool = True) -> nn.Module:
    net = tiny_network().double()
    if not projector:
        net.projector = None
    return net


def test_builders_pass_every_setting():
    net = tiny_network()
    for own in ("pgd", "pgd-l2"):  # clrobust's own loops, random starts from the CPU generator
        with pytest.raises(ValueError, match=f"^{own}$"):
            torchattacks_attack(AttackSpec(own, 0.3 if own == "pgd-l2" else 3 / 255, steps=4), net)
    fgsm = torchattacks_attack(AttackSpec("fgsm", 3 / 255), net)
    assert isinstance(fgsm, ta.FGSM) and fgsm.eps == 3 / 255
    assert isinstance(fgsm.model, _Logits) and fgsm.model.model is net
    apgd = torchattacks_attack(AttackSpec("apgd", 0.5, steps=7, seed=3, norm="L2"), net)
    assert isinstance(apgd, ta.APGD)
    assert (apgd.norm, apgd.eps, apgd.steps, apgd.n_restarts, apgd.loss, apgd.seed) == ("L2", 0.5, 7, 1, "ce", 3)
    with pytest.raises(ValueError, match="^rep$"):
        torchattacks_attack(AttackSpec("rep"), net)
    with pytest.raises(ValueError, match="^none$"):
        torchattacks_attack(AttackSpec("none"), net)


def test_autoattack_is_the_standard_four():
    net = tiny_network()
    aa = torchattacks_attack(AttackSpec("autoattack", 0.25, steps=3, seed=4, n_classes=100, norm="L2"), net)
    assert isinstance(aa, ta.MultiAttack)
    apgd, apgdt, fab, square = aa.attacks
    assert [type(a) for a in aa.attacks] == [ta.APGD, ta.APGDT, ta.FAB, ta.Square]
    for atk in aa.attacks:
        assert (atk.norm, atk.eps, atk.seed, atk.n_restarts) == ("L2", 0.25, 4, 1)
        assert atk.model.model is net
    assert apgd.steps == apgdt.steps == fab.steps == 100
    assert apgd.loss == "ce"
    assert apgdt.n_target_classes == 99 and fab.n_target_classes == 99 and fab.multi_targeted is True
    assert square.n_queries == 5000


def test_logits_wrapper():
    net = tiny_network()
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(_Logits(net)(x), net(x))


# ---------------------------------------------------------------- literal reference loops (float64)

def _start_linf(x: torch.Tensor, eps: float, seed: int, random_start: bool) -> torch.Tensor:
    """torchattacks' and pgd_maximize's start: U(-eps, eps) drawn first from the seeded global RNG."""
    if not random_start:
        return x.clone()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        noise = torch.empty_like(x).uniform_(-eps, eps)
    return (x + noise).clamp(0, 1)


def ref_pgd_linf(loss_fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, eps: float, alpha: float,
                 steps: int, start: torch.Tensor) -> torch.Tensor:
    """Madry et al.'s L-inf PGD: signed gradient ascent, projection onto the eps box, then onto [0, 1]."""
    x_adv = start.detach()
    for _ in range(steps):
        x_adv.requires_grad_(True)
        grad, = torch.autograd.grad(loss_fn(x_adv), x_adv)
        x_adv = x_adv.detach() + alpha * grad.sign()
        x_adv = (x + (x_adv - x).clamp(-eps, eps)).clamp(0, 1)
    return x_adv.detach()


def ref_pgd_l2(net: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, alpha: float, steps: int,
               seed: Optional[int]) -> torch.Tensor:
    """L2 PGD: start uniform in radius along a Gaussian direction, normalised gradient steps, L2-ball projection."""
    b = x.shape[0]
    x_adv = x.clone()
    if seed is not None:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            direction = torch.empty_like(x).normal_()
            radius = torch.zeros(b, 1, 1, 1, dtype=x.dtype).uniform_(0, 1)
        norms = direction.flatten(1).norm(dim=1).view(b, 1, 1, 1)
        x_adv = (x + direction * (radius / norms * eps)).clamp(0, 1)
    for _ in range(steps):
        x_adv.requires_grad_(True)
        grad, = torch.autograd.grad(F.cross_entropy(net(x_adv), y), x_adv)
        grad = grad / (grad.flatten(1).norm(dim=1) + 1e-10).view(b, 1, 1, 1)
        delta = x_adv.detach() + alpha * grad - x
        scale = torch.clamp(eps / delta.flatten(1).norm(dim=1), max=1.0)
        x_adv = (x + delta * scale.view(b, 1, 1, 1)).clamp(0, 1)
    return x_adv.detach()


def ref_nt_xent(z1: torch.Tensor, z2: torch.Tensor, t: float) -> torch.Tensor:
    """NT-Xent written out: for each of the 2N anchors, -log softmax of its positive among the other 2N - 1."""
    z = torch.cat([z1, z2]).double()
    z = z / z.norm(dim=1, keepdim=True)
    n = z1.shape[0]
    sim = z @ z.T / t
    losses = []
    for i in range(2 * n):
        pos = (i + n) % (2 * n)
        others = torch.cat([sim[i, :i], sim[i, i + 1:]])
        losses.append(torch.logsumexp(others, 0) - sim[i, pos])
    return torch.stack(losses).mean()


def _batch(n: int = 4):
    """Float64 images that touch 0 and 1 (so the [0, 1] projection matters) and the net's own labels."""
    torch.manual_seed(5)
    x = torch.rand(n, 3, 32, 32, dtype=torch.float64)
    x[:, 0, :4] = 0.0
    x[:, 1, :4] = 1.0
    return x


def _ce(net: nn.Module, y: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    return lambda xa: F.cross_entropy(net(xa), y)


@pytest.mark.parametrize("random_start", [True, False])
def test_pgd_matches_reference(random_start):
    net, x = _net64(), _batch()
    y = torch.tensor([0, 3, 5, 9])
    eps, alpha, steps, seed, bi = 6 / 255, 2.5 / 255, 3, 2, 3
    spec = AttackSpec("pgd", eps, steps=steps, alpha=alpha, seed=seed, random_start=random_start)
    got = attack_batch(spec, net, x, y, batch_index=bi)
    start = _start_linf(x, eps, seed * 100003 + bi, random_start)
    want = ref_pgd_linf(_ce(net, y), x, eps, alpha, steps, start)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-12)
    assert (got - x).abs().max() == pytest.approx(eps, rel=1e-9)
    other = attack_batch(spec, net, x, y, batch_index=bi + 1)
    assert torch.equal(other, got) != random_start  # the batch index seeds the start


def test_pgd_default_alpha_and_seed_zero():
    net, x = _net64(), _batch(2)
    y = torch.tensor([1, 2])
    spec = AttackSpec("pgd", 4 / 255, steps=2)
    got = attack_batch(spec, net, x, y)
    want = ref_pgd_linf(_ce(net, y), x, 4 / 255, 2.5 * 4 / 255 / 2, 2, _start_linf(x, 4 / 255, 0, True))
    torch.testing.assert_close(got, want, rtol=0, atol=1e-12)


def test_fgsm_matches_reference():
    net, x = _net64(), _batch()
    y = torch.tensor([0, 3, 5, 9])
    x_req = x.clone().requires_grad_(True)
    grad, = torch.autograd.grad(F.cross_entropy(net(x_req), y), x_req)
    want = (x + 5 / 255 * grad.sign()).clamp(0, 1)
    got = attack_batch(AttackSpec("fgsm", 5 / 255, seed=1), net, x, y, batch_index=2)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-12)


@pytest.mark.parametrize("random_start", [True, False])
def test_pgd_l2_matches_reference(random_start):
    net, x = _net64(), _batch()
    y = torch.tensor([0, 3, 5, 9])
    eps, alpha, steps, seed, bi = 0.4, 0.15, 3, 1, 2
    spec = AttackSpec("pgd-l2", eps, steps=steps, alpha=alpha, seed=seed, random_start=random_start)
    got = attack_batch(spec, net, x, y, batch_index=bi)
    want = ref_pgd_l2(net, x, y, eps, alpha, steps, seed * 100003 + bi if random_start else None)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-12)
    assert (got - x).flatten(1).norm(dim=1).max() <= eps + 1e-12


@pytest.mark.parametrize("random_start", [True, False])
def test_pgd_maximize_matches_reference(random_start):
    """A loss that ignores the bottom half of the image: there the gradient is 0 and PGD must not move."""
    torch.manual_seed(3)
    x = _batch(3)
    w = torch.randn(3, 3, 16, 32, dtype=torch.float64)

    def loss_fn(xa: torch.Tensor) -> torch.Tensor:
        return (w * xa[:, :, :16] ** 2).sum() + xa[:, :, :16].sin().sum()

    eps, alpha, steps = 0.05, 0.02, 4
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(11)
        got = pgd_maximize(loss_fn, x, eps, alpha, steps, random_start=random_start)
    start = _start_linf(x, eps, 11, random_start)
    want = ref_pgd_linf(loss_fn, x, eps, alpha, steps, start)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-12)
    assert torch.equal(got[:, :, 16:], start[:, :, 16:])  # zero gradient: no step
    assert not got.requires_grad


def test_pgd_maximize_defaults_to_a_random_start():
    x = _batch(2)
    loss_fn = lambda xa: xa.sum()  # noqa: E731
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(4)
        got = pgd_maximize(loss_fn, x, 0.1, 0.01, 1)
    torch.testing.assert_close(got, ref_pgd_linf(loss_fn, x, 0.1, 0.01, 1, _start_linf(x, 0.1, 4, True)),
                               rtol=0, atol=1e-12)


def test_pgd_maximize_eps_zero_does_nothing():
    x = _batch(2)
    calls = []
    state = torch.get_rng_state()
    out = pgd_maximize(lambda xa: calls.append(1) or xa.sum(), x, 0, 0.1, 3)
    assert torch.equal(out, x) and out is not x and not calls
    assert torch.equal(torch.get_rng_state(), state)


@pytest.mark.parametrize("projector,temperature", [(True, 0.2), (False, 0.7)])
def test_representation_attack_matches_reference(projector, temperature):
    net, x = _net64(projector), _batch()
    embed = net.project if projector else net.features
    eps, alpha, steps = 6 / 255, 2 / 255, 3
    with torch.no_grad():
        z_clean = embed(x)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(9)
        got = representation_attack(net, x, eps, alpha, steps, temperature=temperature)
    loss_fn = lambda xa: ref_nt_xent(z_clean, embed(xa), temperature)  # noqa: E731
    want = ref_pgd_linf(loss_fn, x, eps, alpha, steps, _start_linf(x, eps, 9, True))
    torch.testing.assert_close(got, want, rtol=0, atol=1e-12)
    assert ref_nt_xent(z_clean, embed(got), temperature) > ref_nt_xent(z_clean, embed(x), temperature)


def test_representation_attack_without_a_projector_attribute():
    """A model with only ``features`` (no ``projector`` at all) is attacked on its features."""

    class FeaturesOnly(nn.Module):
        def __init__(self, net: nn.Module):
            super().__init__()
            self.net = net

        def features(self, x: torch.Tensor) -> torch.Tensor:
            return self.net.features(x)

    net, x = _net64(projector=False), _batch(2)
    runs = []
    for model in (FeaturesOnly(net), net):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(1)
            runs.append(representation_attack(model, x, 4 / 255, 1 / 255, 2))
    torch.testing.assert_close(runs[0], runs[1], rtol=0, atol=0)
    assert not torch.equal(runs[0], x)


@pytest.mark.parametrize("random_start", [True, False])
def test_rep_through_attack_batch(random_start):
    """attack_batch('rep'): the default temperature 0.5, the projection head, the per-batch seed; no labels used."""
    net, x = _net64(), _batch()
    eps, alpha, steps, seed, bi = 6 / 255, 2 / 255, 2, 3, 1
    spec = AttackSpec("rep", eps, steps=steps, alpha=alpha, seed=seed, random_start=random_start)
    got = attack_batch(spec, net, x, torch.full((4,), -1), batch_index=bi)
    with torch.no_grad():
        z_clean = net.project(x)
    loss_fn = lambda xa: ref_nt_xent(z_clean, net.project(xa), 0.5)  # noqa: E731
    want = ref_pgd_linf(loss_fn, x, eps, alpha, steps, _start_linf(x, eps, seed * 100003 + bi, random_start))
    torch.testing.assert_close(got, want, rtol=0, atol=1e-12)


# ---------------------------------------------------------------- attack_batch's contract

def _count_forwards(net: nn.Module) -> list:
    calls: list = []
    net.register_forward_pre_hook(lambda m, i: calls.append(1))
    return calls


@pytest.mark.parametrize("spec", [AttackSpec("none"), AttackSpec("pgd", 0), AttackSpec("rep", 0.0),
                                  AttackSpec("fgsm", 0)])
def test_no_attack_returns_a_copy_without_work(spec):
    net = tiny_network()
    calls = _count_forwards(net)
    x = torch.rand(2, 3, 32, 32)
    out = attack_batch(spec, net, x, torch.zeros(2, dtype=torch.long))
    assert torch.equal(out, x) and out is not x and not calls


@pytest.mark.parametrize("name", ["pgd", "rep"])
def test_attack_batch_eval_mode_and_restores_mode(name):
    net = _net64()
    x, y = _batch(), torch.tensor([0, 3, 5, 9])
    spec = AttackSpec(name, 4 / 255, steps=2, seed=1)
    want = attack_batch(spec, net, x, y)
    assert not net.training  # torchattacks' own wrapper would leave it in train mode
    net.train()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    got = attack_batch(spec, net, x, y)
    assert net.training
    assert all(torch.equal(v, before[k]) for k, v in net.state_dict().items())  # BN statistics untouched
    torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_attack_batch_restores_mode_on_error():
    net = tiny_network().train()
    with pytest.raises(RuntimeError):
        attack_batch(AttackSpec("pgd", 4 / 255, steps=1), net, torch.rand(2, 5, 32, 32), torch.zeros(2).long())
    assert net.training


# ---------------------------------------------------------------- end to end, every attack

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


def test_the_noise_control_is_random_signs_at_eps_seeded_on_the_cpu():
    from clrobust.attacks import AttackSpec, attack_batch, noise_batch

    x = torch.rand(4, 3, 8, 8) * 0.8 + 0.1  # away from the box edges: nothing clipped
    eps = 8 / 255
    a = noise_batch(eps, "Linf", x, seed=3, batch_index=2)
    d = a - x
    assert torch.allclose(d.abs(), torch.full_like(d, eps), atol=1e-6)
    assert 0.4 < float((d > 0).float().mean()) < 0.6
    assert torch.equal(a, noise_batch(eps, "Linf", x, 3, 2)) and not torch.equal(a, noise_batch(eps, "Linf", x, 3, 4))
    l2 = noise_batch(0.5, "L2", x, 3, 2) - x
    assert torch.allclose(l2.flatten(1).norm(dim=1), torch.full((4,), 0.5), rtol=1e-5)
    assert torch.equal(noise_batch(0.5, "L2", x, 3, 2), noise_batch(0.5, "L2", x, 3, 2))  # seeded too
    assert not torch.equal(noise_batch(0.5, "L2", x, 3, 2), noise_batch(0.5, "L2", x, 3, 5))
    edge = noise_batch(eps, "Linf", torch.zeros(2, 3, 4, 4), 0, 0)
    assert float(edge.min()) == 0.0 and float(edge.max()) == pytest.approx(eps)  # clipped into [0, 1]
    for norm, radius in (("Linf", 0.6), ("L2", 30.0)):  # pushed past 1: clipped at 1
        top = noise_batch(radius, norm, torch.full((2, 3, 4, 4), 0.9), 0, 0)
        assert float(top.max()) == 1.0 and float(top.min()) < 0.9, norm
    spec = AttackSpec("pgd", eps, 3, seed=3)
    assert spec.noise().name == "noise" and spec.noise().eps == eps and spec.noise().norm == "Linf"
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(192, 10))
    assert torch.equal(attack_batch(spec.noise(), net, x, torch.zeros(4, dtype=torch.long), batch_index=2), a)


def test_random_starts_come_from_the_cpu_generator(monkeypatch):
    """The start is drawn by torch's CPU generator and moved to the input's device: the values do not depend
    on the device's own generator (here: a CUDA-like generator that would give other numbers is never used)."""
    from clrobust.attacks import cpu_uniform

    x = torch.rand(3, 3, 8, 8, dtype=torch.float64)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(11)
        a = cpu_uniform(x, -0.1, 0.1)
    drawn_on = []
    real_empty = torch.empty

    def spy_empty(*args, **kw):
        out = real_empty(*args, **kw)
        drawn_on.append(out.device.type)
        return out

    monkeypatch.setattr(torch, "empty", spy_empty)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(11)
        b = cpu_uniform(x, -0.1, 0.1)
    assert drawn_on == ["cpu"] and torch.equal(a, b) and b.dtype == x.dtype
    assert float(a.abs().max()) <= 0.1
    net = tiny_network()
    y = torch.zeros(3, dtype=torch.long)
    for name, eps in (("pgd", 8 / 255), ("pgd-l2", 0.5)):
        spec = AttackSpec(name, eps, steps=2, seed=4)
        drawn_on.clear()
        first = attack_batch(spec, net, x.float(), y, batch_index=1)
        assert "cpu" in drawn_on and set(drawn_on) == {"cpu"}, name
        assert torch.equal(first, attack_batch(spec, net, x.float(), y, batch_index=1)), name


@pytest.mark.parametrize("name,eps", [("pgd", 8 / 255), ("pgd-l2", 0.5)])
def test_several_batches_in_one_attack_call_give_the_batch_by_batch_examples(name, eps):
    """clrobust's PGD loops on a group of batches start every image where the batch-by-batch call starts it
    (per-batch seeded CPU draws), so the examples are the same; an uneven last batch included."""
    from clrobust.attacks import attack_batch, attack_batches

    torch.manual_seed(0)
    net = tiny_network(seed=2).eval()
    xs = [torch.rand(n, 3, 32, 32) for n in (8, 8, 5)]
    ys = [torch.randint(0, 10, (n,)) for n in (8, 8, 5)]
    spec = AttackSpec(name, eps, steps=3, seed=4)
    one_by_one = [attack_batch(spec, net, x, y, batch_index=i) for i, (x, y) in enumerate(zip(xs, ys), start=6)]
    grouped = attack_batches(spec, net, xs, ys, [6, 7, 8])
    assert [len(g) for g in grouped] == [8, 8, 5]
    moved = 0.0
    for a, b, x in zip(grouped, one_by_one, xs):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
        moved = max(moved, float((a - x).abs().max()))
    assert moved > eps / 10  # the attack did move the images
    shifted = attack_batches(spec, net, xs, ys, [7, 8, 9])  # other batch indices: other starts
    assert not torch.equal(shifted[0], grouped[0])


def test_attack_group_size_auto_and_given():
    from clrobust.attacks import CUDA_ATTACK_IMAGES, attack_batch_images

    auto, given = AttackSpec("pgd"), AttackSpec("pgd", batch_size=300)
    assert attack_batch_images(auto, 128, "cpu", 32) == 128  # the CPU: one recording batch per call
    assert attack_batch_images(auto, 128, "cuda", 32) == (CUDA_ATTACK_IMAGES // 128) * 128 == 1024
    assert attack_batch_images(auto, 100, "cuda:1", 32) == 1000  # whole batches only
    assert attack_batch_images(auto, 2000, "cuda", 32) == 2000
    assert attack_batch_images(auto, 64, "cuda", 224) == 64  # ImageNet-size inputs: one batch
    assert attack_batch_images(given, 128, "cpu", 32) == 300
    assert AttackSpec("rep").batch_coupled and AttackSpec("noise").batch_coupled
    assert not AttackSpec("autoattack").batch_coupled
    with pytest.raises(ClrobustError, match="attack-batch-size"):
        AttackSpec("pgd", batch_size=0)


def test_a_group_that_cannot_be_one_call_is_attacked_batch_by_batch():
    """One batch, batch-coupled attacks (the noise control, the representation attack) and eps 0 go batch by
    batch: exactly attack_batch's examples, each with its own batch index."""
    from clrobust.attacks import attack_batches

    torch.manual_seed(0)
    net = tiny_network(seed=2).eval()
    xs = [torch.rand(n, 3, 32, 32) for n in (6, 5)]
    ys = [torch.randint(0, 10, (n,)) for n in (6, 5)]
    for spec in (AttackSpec("noise", 8 / 255, seed=2), AttackSpec("rep", 8 / 255, steps=2, seed=2),
                 AttackSpec("pgd", 0.0), AttackSpec("fgsm", 0.0)):
        got = attack_batches(spec, net, xs, ys, [3, 4])
        want = [attack_batch(spec, net, x, y, i) for x, y, i in zip(xs, ys, [3, 4])]
        assert len(got) == 2 and all(torch.equal(a, b) for a, b in zip(got, want)), spec.name
    assert torch.equal(attack_batches(AttackSpec("noise", 8 / 255), net, xs, ys, [3, 4])[1],
                       attack_batch(AttackSpec("noise", 8 / 255), net, xs[1], ys[1], 4))
    spec = AttackSpec("pgd", 8 / 255, steps=2, seed=5)
    (alone,) = attack_batches(spec, net, xs[:1], ys[:1], [9])
    assert torch.equal(alone, attack_batch(spec, net, xs[0], ys[0], 9))


def test_torchattacks_attacks_on_a_group_run_once_seeded_by_its_first_batch():
    """FGSM and APGD on a group: one torchattacks call on the concatenated batches under the seed of the
    first batch's index, split back; the model is attacked in eval mode and left in the mode it was in."""
    from clrobust.attacks import attack_batches

    torch.manual_seed(1)
    net = tiny_network(seed=3)
    xs = [torch.rand(n, 3, 32, 32) for n in (4, 3)]
    with torch.no_grad():
        ys = [net.eval()(x).argmax(1) for x in xs]
    net.train()
    stats = {k: v.clone() for k, v in net.state_dict().items()}
    for spec in (AttackSpec("fgsm", 8 / 255, seed=2), AttackSpec("apgd", 8 / 255, steps=3, seed=2)):
        got = attack_batches(spec, net, xs, ys, [5, 6])
        assert net.training
        assert all(torch.equal(v, stats[k]) for k, v in net.state_dict().items())  # eval mode: BN untouched
        net.eval()
        with seeded(spec.seed * 100003 + 5):
            whole = torchattacks_attack(spec, net)(torch.cat(xs), torch.cat(ys)).detach()
        net.train()
        assert [len(g) for g in got] == [4, 3]
        assert torch.equal(torch.cat(got), whole), spec.name
        assert float((whole - torch.cat(xs)).abs().max()) > 0
    fgsm = attack_batches(AttackSpec("fgsm", 8 / 255), net, xs, ys, [5, 6])
    one_by_one = [attack_batch(AttackSpec("fgsm", 8 / 255), net, x, y, i) for x, y, i in zip(xs, ys, [5, 6])]
    for a, b in zip(fgsm, one_by_one):  # FGSM has no randomness: the group changes nothing
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)


def test_pgd_on_a_group_without_random_start_starts_at_the_images():
    from clrobust.attacks import attack_batches

    torch.manual_seed(2)
    net = tiny_network(seed=4).eval()
    xs = [torch.rand(n, 3, 32, 32) for n in (5, 4)]
    ys = [torch.randint(0, 10, (n,)) for n in (5, 4)]
    for name, eps in (("pgd", 8 / 255), ("pgd-l2", 0.5)):
        spec = AttackSpec(name, eps, steps=2, random_start=False, seed=1)
        got = attack_batches(spec, net, xs, ys, [0, 1])
        for a, x, y, i in zip(got, xs, ys, [0, 1]):
            torch.testing.assert_close(a, attack_batch(spec, net, x, y, i), rtol=0, atol=1e-6)


def test_the_noise_control_keeps_the_attacks_settings():
    spec = AttackSpec("pgd-l2", 0.5, 7, seed=3, n_classes=7, batch_size=64)
    assert spec.noise() == AttackSpec("noise", 0.5, 1, None, seed=3, n_classes=7, norm="L2", batch_size=64)
    assert spec.noise().to_dict()["threat_model"] == "none (random noise control)"
    assert spec.to_dict()["threat_model"] != spec.noise().to_dict()["threat_model"]
    assert AttackSpec("pgd", batch_size=1).batch_size == 1  # one image per call is allowed


def test_group_size_on_a_gpu_up_to_64_pixel_images():
    from clrobust.attacks import attack_batch_images

    assert attack_batch_images(AttackSpec("pgd"), 128, "cuda", 64) == 1024
    assert attack_batch_images(AttackSpec("pgd"), 128, "cuda", 65) == 128


def test_pgd_l2_defaults_to_a_random_start_and_works_at_eps_one():
    """pgd_l2 called without random_start starts at a random point (as the reference does), and eps = 1 is an
    ordinary radius, not a special case."""
    from clrobust.attacks import pgd_l2

    net, x = _net64(), _batch()
    y = torch.tensor([0, 3, 5, 9])

    def loss(xa):
        return F.cross_entropy(net(xa), y)

    for eps in (0.4, 1.0):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(6)
            got = pgd_l2(loss, x, eps, 0.3, 2)
        torch.testing.assert_close(got, ref_pgd_l2(net, x, y, eps, 0.3, 2, 6), rtol=0, atol=1e-12)
        assert float((got - x).abs().max()) > 0


def test_the_noise_controls_draws_are_pinned():
    """A recorded seed must mean the same noise in later versions: the signs drawn for two (seed, batch index)
    pairs, pinned here."""
    from clrobust.attacks import noise_batch

    def signs(shape, seed, index):
        return (noise_batch(1.0, "Linf", torch.full(shape, 0.5), seed, index).flatten() > 0.5).int().tolist()

    assert signs((1, 1, 2, 4), 3, 2) == [0, 0, 0, 0, 0, 1, 0, 0]
    assert signs((1, 1, 4, 4), 1, 1) == [1, 1, 1, 0, 0, 1, 0, 1, 1, 0, 0, 1, 0, 1, 0, 1]
