"""Losses against torch's own cross-entropy, hand-computed numbers and naive float64 sums; batch
mixing against its definition (exact MixUp blend, CutMix box area = target weight) and scipy's Beta."""

import math

import pytest
import scipy.stats
import torch
import torch.nn.functional as F

from lab.train.losses import classification_loss, distillation_loss, soft_cross_entropy
from lab.train.mix import Mixer, cutmix_box, one_hot_smooth, sample_beta

LOG = math.log

# --- cross-entropy -----------------------------------------------------------------------


def test_soft_cross_entropy_of_one_hot_is_cross_entropy():
    logits, y = torch.randn(6, 5), torch.tensor([0, 4, 2, 2, 1, 3])
    torch.testing.assert_close(soft_cross_entropy(logits, F.one_hot(y, 5).float()), F.cross_entropy(logits, y))


@pytest.mark.parametrize("eps", [0.0, 0.1, 0.3])
def test_smoothed_one_hot_is_torch_label_smoothing(eps):
    logits, y = torch.randn(7, 4), torch.tensor([0, 1, 2, 3, 3, 1, 0])
    expected = F.cross_entropy(logits, y, label_smoothing=eps)
    targets = one_hot_smooth(y, 4, eps)
    torch.testing.assert_close(targets.sum(1), torch.ones(7))
    torch.testing.assert_close(targets[0], torch.tensor([1 - eps + eps / 4, eps / 4, eps / 4, eps / 4]))
    torch.testing.assert_close(soft_cross_entropy(logits, targets), expected)
    torch.testing.assert_close(classification_loss(logits, targets), expected)
    torch.testing.assert_close(classification_loss(logits, y, smoothing=eps), expected)


# --- distillation ------------------------------------------------------------------------
# Student logits chosen so the softmax is exact: rows [1/2, 1/4, 1/4] and [1/5, 3/5, 1/5].
STUDENT = torch.tensor([[LOG(2), 0.0, 0.0], [0.0, LOG(3), 0.0]], dtype=torch.float64)
LABELS = torch.tensor([0, 2])
TEACHER = torch.tensor([[0.0, 5.0, 1.0], [0.0, 9.0, 2.0]], dtype=torch.float64)  # argmax: class 1 twice


def test_hard_distillation_by_hand():
    # ground truth: -log(1/2), -log(1/5); teacher labels (1, 1): -log(1/4), -log(3/5)
    # L = 1/2 * (log 2 + log 5) / 2 + 1/2 * (log 4 + log 5/3) / 2 = log(200/3) / 4
    loss = distillation_loss(STUDENT, LABELS, TEACHER, kind="hard")
    assert loss.item() == pytest.approx(LOG(200 / 3) / 4, rel=1e-12)
    # the paper's fixed halves: tau and lam do not enter the hard loss
    assert distillation_loss(STUDENT, LABELS, TEACHER, kind="hard", tau=1.0, lam=0.9).item() == pytest.approx(loss.item())


def test_hard_distillation_with_a_distillation_token_by_hand():
    dist = torch.tensor([[0.0, 0.0, LOG(2)], [LOG(2), 0.0, 0.0]], dtype=torch.float64)  # p(class 1) = 1/4 twice
    # L = 1/2 * (log 2 + log 5) / 2 + 1/2 * log 4
    loss = distillation_loss((STUDENT, dist), LABELS, TEACHER, kind="hard")
    assert loss.item() == pytest.approx(LOG(10) / 4 + LOG(4) / 2, rel=1e-12)


def naive_soft_distillation(cls, dist, targets, teacher, tau, lam):
    """DeiT's soft loss with explicit sums in float64: soft-target CE over the batch, KL(teacher ||
    student) at temperature tau summed over batch and classes, divided by B*K, times tau^2."""
    b, k = cls.shape
    ce = kl = 0.0
    for i in range(b):
        zs = [math.exp(v) for v in cls[i].tolist()]
        ps = [v / sum(zs) for v in zs]
        ce -= sum(t * math.log(p) for t, p in zip(targets[i].tolist(), ps))
        es = [math.exp(v / tau) for v in dist[i].tolist()]
        et = [math.exp(v / tau) for v in teacher[i].tolist()]
        qs, qt = [v / sum(es) for v in es], [v / sum(et) for v in et]
        kl += sum(t * math.log(t / s) for t, s in zip(qt, qs))
    return (1 - lam) * ce / b + lam * tau * tau * kl / (b * k)


@pytest.mark.parametrize("tau,lam", [(3.0, 0.1), (1.0, 0.5), (0.5, 1.0), (2.0, 0.0)])
def test_soft_distillation_matches_naive_sums(tau, lam):
    gen = torch.Generator().manual_seed(1)
    cls, dist, teacher = (torch.randn(5, 7, generator=gen, dtype=torch.float64) * 2 for _ in range(3))
    targets = torch.softmax(torch.randn(5, 7, generator=gen, dtype=torch.float64), 1)  # mixed/smoothed ground truth
    expected = naive_soft_distillation(cls, dist, targets, teacher, tau, lam)
    assert distillation_loss((cls, dist), targets, teacher, "soft", tau, lam).item() == pytest.approx(expected, rel=1e-10)
    # one logits tensor serves both terms; int labels are one-hot targets
    labels = torch.tensor([0, 6, 3, 3, 1])
    expected = naive_soft_distillation(cls, cls, F.one_hot(labels, 7).double(), teacher, tau, lam)
    assert distillation_loss(cls, labels, teacher, "soft", tau, lam).item() == pytest.approx(expected, rel=1e-10)


@pytest.mark.parametrize("kind", ["hard", "soft"])
def test_class_and_distillation_logits_feed_their_own_terms(kind):
    gen = torch.Generator().manual_seed(2)
    cls, dist, teacher = (torch.randn(4, 5, generator=gen, dtype=torch.float64) for _ in range(3))
    labels = torch.tensor([1, 0, 4, 2])
    other = dist + torch.randn(4, 5, generator=gen, dtype=torch.float64)
    loss = lambda c, d: distillation_loss((c, d), labels, teacher, kind).item()  # noqa: E731
    base_weight = 0.5 if kind == "hard" else 0.9
    # changing the distillation logits changes the loss by the change of the teacher term alone,
    # computed independently (the teacher's argmax labels, or the naive KL at the defaults tau=3, lam=0.1)
    if kind == "hard":
        teacher_term = lambda d: 0.5 * F.cross_entropy(d, teacher.argmax(1)).item()  # noqa: E731
    else:
        onehot = F.one_hot(labels, 5).double()
        teacher_term = lambda d: 0.1 * naive_soft_distillation(cls, d, onehot, teacher, 3.0, 1.0)  # noqa: E731
    assert loss(cls, other) - loss(cls, dist) == pytest.approx(teacher_term(other) - teacher_term(dist), abs=1e-12)
    assert loss(cls, other) != pytest.approx(loss(cls, dist))
    # changing the class logits changes only the ground-truth term
    cls2 = cls + 1.5 * torch.randn(4, 5, generator=gen, dtype=torch.float64)
    expected = base_weight * (F.cross_entropy(cls2, labels) - F.cross_entropy(cls, labels)).item()
    assert loss(cls2, dist) - loss(cls, dist) == pytest.approx(expected, abs=1e-12)


def test_no_distillation_is_the_class_logits_cross_entropy_and_the_teacher_gets_no_gradient():
    cls, dist = torch.randn(3, 4), torch.randn(3, 4)
    labels = torch.tensor([3, 0, 1])
    torch.testing.assert_close(distillation_loss((cls, dist), labels, None, kind="none"), F.cross_entropy(cls, labels))
    student = torch.randn(3, 4, requires_grad=True)
    teacher = torch.randn(3, 4, requires_grad=True)
    distillation_loss(student, labels, teacher, kind="soft").backward()
    assert teacher.grad is None and student.grad is not None


@pytest.mark.parametrize("kwargs,match", [
    (dict(kind="medium"), "kind"), (dict(tau=0.0), "tau"), (dict(tau=-1.0), "tau"),
    (dict(lam=1.5), "lam"), (dict(lam=-0.1), "lam"),
])
def test_bad_distillation_settings_are_value_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        distillation_loss(torch.randn(2, 3), torch.tensor([0, 1]), torch.randn(2, 3), **kwargs)


def test_distillation_without_teacher_or_with_mismatched_teacher_is_a_value_error():
    with pytest.raises(ValueError, match="teacher"):
        distillation_loss(torch.randn(2, 3), torch.tensor([0, 1]), None, kind="hard")
    with pytest.raises(ValueError, match="teacher"):
        distillation_loss(torch.randn(2, 3), torch.tensor([0, 1]), torch.randn(2, 4), kind="soft")


# --- mixing ------------------------------------------------------------------------------


def batch(b=6, c=2, h=8, w=10, k=10):
    gen = torch.Generator().manual_seed(3)
    return torch.randn(b, c, h, w, generator=gen), torch.randint(0, k, (b,), generator=gen)


def test_mixer_is_reproducible_with_a_generator_and_leaves_its_input_alone():
    images, labels = batch()
    copy = images.clone()
    mixer = Mixer(10)
    first = [mixer(images, labels, torch.Generator().manual_seed(s)) for s in range(8)]
    again = [mixer(images, labels, torch.Generator().manual_seed(s)) for s in range(8)]
    for (x1, t1), (x2, t2) in zip(first, again):
        assert torch.equal(x1, x2) and torch.equal(t1, t2)
    assert len({tuple(t.flatten().tolist()) for _, t in first}) > 4  # different seeds, different mixes
    assert torch.equal(images, copy)


def test_mixed_targets_are_distributions():
    images, labels = batch()
    gen = torch.Generator().manual_seed(4)
    mixer = Mixer(10, prob=0.7, smoothing=0.1)
    for _ in range(30):
        _, targets = mixer(images, labels, gen)
        assert targets.shape == (6, 10) and bool((targets > 0).all())
        torch.testing.assert_close(targets.sum(1), torch.ones(6))


def test_mixup_blend_is_exact():
    images, labels = batch()
    mixer = Mixer(10, mixup_alpha=0.8, cutmix_alpha=0.0, smoothing=0.1)
    for seed in range(10):
        mix = mixer.draw(8, 10, torch.Generator().manual_seed(seed))
        mixed, targets = mixer(images, labels, torch.Generator().manual_seed(seed))
        lam = mix.lam
        assert 0.0 < lam < 1.0 and mix.box is None
        assert torch.equal(mixed, lam * images + (1 - lam) * images.flip(0))
        # smoothed one-hots built by hand: off = 0.1/10, on = 0.9 + 0.01
        own = torch.full((6, 10), 0.01)
        own[torch.arange(6), labels] = 0.91
        torch.testing.assert_close(targets, lam * own + (1 - lam) * own.flip(0))


def test_cutmix_box_comes_from_the_flipped_batch_and_weighs_its_area():
    b, h, w = 6, 8, 10
    images = torch.arange(1.0, b + 1).view(b, 1, 1, 1).expand(b, 3, h, w).contiguous()  # image i is all i+1
    labels = torch.arange(b)  # even batch: nobody is their own partner
    mixer = Mixer(b, mixup_alpha=0.0, cutmix_alpha=1.0, smoothing=0.0)
    gen = torch.Generator().manual_seed(5)
    areas = []
    for _ in range(40):
        mixed, targets = mixer(images, labels, gen)
        pasted = mixed != images  # pixels that came from elsewhere
        assert torch.equal(mixed[pasted], images.flip(0)[pasted])  # ... from the flipped batch
        mask = pasted[0, 0]
        assert bool((pasted == mask).all())  # one box for the whole batch, every channel
        rows, cols = mask.any(1).nonzero(), mask.any(0).nonzero()
        if mask.any():  # the pasted pixels fill their bounding box: a rectangle
            assert int(mask.sum()) == (rows.max() - rows.min() + 1) * (cols.max() - cols.min() + 1)
        area = float(mask.float().mean())
        areas.append(area)
        torch.testing.assert_close(targets[torch.arange(b), labels.flip(0)], torch.full((b,), area))
        torch.testing.assert_close(targets[torch.arange(b), labels], torch.full((b,), 1 - area))
    assert min(areas) < 0.3 and max(areas) > 0.5  # boxes of many sizes (clipped ones among them)


def test_cutmix_box_is_clipped_and_lam_corrected():
    gen = torch.Generator().manual_seed(6)
    for lam in (0.0, 0.2, 0.5, 0.9):
        for _ in range(20):
            (y0, y1, x0, x1), corrected = cutmix_box(7, 9, lam, gen)
            assert 0 <= y0 <= y1 <= 7 and 0 <= x0 <= x1 <= 9
            assert corrected == pytest.approx(1 - (y1 - y0) * (x1 - x0) / 63)
            assert y1 - y0 <= int(7 * math.sqrt(1 - lam)) and x1 - x0 <= int(9 * math.sqrt(1 - lam))


@pytest.mark.parametrize("alpha", [0.2, 0.8, 1.0, 3.0])
def test_beta_draws_follow_scipy_beta(alpha):
    gen = torch.Generator().manual_seed(7)
    draws = [sample_beta(alpha, gen) for _ in range(1500)]
    assert scipy.stats.kstest(draws, "beta", args=(alpha, alpha)).pvalue > 1e-3


def test_both_alphas_switch_between_mixup_and_cutmix_and_prob_skips_batches():
    gen = torch.Generator().manual_seed(8)
    mixer = Mixer(10, prob=0.5, switch_prob=0.5)
    draws = [mixer.draw(8, 8, gen) for _ in range(200)]
    none = sum(d.lam == 1.0 and d.box is None for d in draws)
    cutmix = sum(d.box is not None for d in draws)
    assert 70 < none < 130 and 30 < cutmix < 70


def test_no_mixing_is_identity_with_smoothed_one_hots():
    images, labels = batch()
    for mixer in (Mixer(10, mixup_alpha=0.0, cutmix_alpha=0.0), Mixer(10, prob=0.0)):
        assert not mixer.active
        gen = torch.Generator().manual_seed(0)
        mixed, targets = mixer(images, labels, gen)
        assert torch.equal(mixed, images)
        torch.testing.assert_close(targets, one_hot_smooth(labels, 10, 0.1))
        assert torch.equal(gen.get_state(), torch.Generator().manual_seed(0).get_state())  # nothing drawn
    assert Mixer(10).active


@pytest.mark.parametrize("kwargs", [dict(mixup_alpha=-1.0), dict(prob=1.5), dict(switch_prob=-0.1),
                                    dict(smoothing=1.0), dict(num_classes=0)])
def test_bad_mixer_settings_are_value_errors(kwargs):
    with pytest.raises(ValueError):
        Mixer(**{"num_classes": 10, **kwargs})
