"""Few-shot probe: recovers separable Gaussian clusters, improves with shots, fits what scikit-learn
fits (RidgeClassifier, LogisticRegression); features of lab models are their head minus the classifier."""

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression, RidgeClassifier

import lab
from lab.train.probe import (extract_features, features, few_shot_probe, fit_logistic, fit_ridge,
                             sample_support, standardize)


def clusters(k=10, d=64, per_class=(40, 200), spread=0.35, seed=0):
    """Gaussian clusters: class means ~ N(0, spread^2 I), unit isotropic noise -> train and test sets."""
    gen = torch.Generator().manual_seed(seed)
    means = torch.randn(k, d, generator=gen) * spread
    sets = []
    for n in per_class:
        y = torch.arange(k).repeat_interleave(n)
        sets += [means[y] + torch.randn(len(y), d, generator=gen), y]
    return sets


@pytest.mark.parametrize("method", ["ridge", "lbfgs"])
def test_probe_recovers_separated_clusters(method):
    result = few_shot_probe(*clusters(spread=3.0), shots=(10,), method=method)
    assert result["method"] == method
    assert result["shots"][10]["mean"] >= 0.99
    assert len(result["shots"][10]["seeds"]) == 3


@pytest.mark.parametrize("method", ["ridge", "lbfgs"])
def test_accuracy_grows_with_shots_on_overlapping_clusters(method):
    result = few_shot_probe(*clusters(spread=0.35), shots=(1, 5, 25), method=method)
    means = [result["shots"][k]["mean"] for k in (1, 5, 25)]
    assert 0.1 < means[0] + 0.05 < means[1] < means[2] - 0.1 < 0.9  # above chance, below perfect, rising
    for k in (1, 5, 25):
        accs = result["shots"][k]["seeds"]
        assert result["shots"][k]["std"] == pytest.approx(np.std(accs, ddof=1))
        assert all(0.0 <= a <= 1.0 for a in accs)


def test_shots_above_the_smallest_class_are_skipped_with_a_note():
    train_x, train_y, test_x, test_y = clusters(per_class=(40, 20))
    keep = (train_y != 3) | (torch.arange(len(train_y)) % 40 < 7)  # class 3 keeps 7 examples
    result = few_shot_probe(train_x[keep], train_y[keep], test_x, test_y, shots=(5, 10), seeds=(0,))
    assert list(result["shots"]) == [5] and result["shots"][5]["std"] == 0.0
    assert "smallest class has 7" in result["skipped"][10]


def test_support_sets_are_seeded_samples_without_replacement():
    y = torch.arange(4).repeat_interleave(6)
    idx = sample_support(y, 3, seed=0)
    assert len(set(idx.tolist())) == 12 and torch.equal(torch.bincount(y[idx]), torch.full((4,), 3))
    assert torch.equal(idx, sample_support(y, 3, seed=0)) and not torch.equal(idx, sample_support(y, 3, seed=1))


@pytest.mark.parametrize("n_per_class,d", [(20, 16), (4, 64)])  # primal (n >= d) and dual (n < d) solves
def test_ridge_matches_scikit_learn(n_per_class, d):
    train_x, train_y, _, _ = clusters(k=5, d=d, per_class=(n_per_class, 1), spread=0.5, seed=1)
    x, = standardize(train_x.double())
    w, b = fit_ridge(x, train_y, 5, l2=3.0)
    ref = RidgeClassifier(alpha=3.0, solver="cholesky").fit(x.numpy(), train_y.numpy())  # {-1, +1} targets too
    np.testing.assert_allclose(w.T.numpy(), ref.coef_, atol=1e-9)
    np.testing.assert_allclose(b.numpy(), ref.intercept_, atol=1e-9)
    # and the closed form itself, in the primal, with numpy
    xn, t = x.numpy(), 2.0 * np.eye(5)[train_y.numpy()] - 1.0
    primal = np.linalg.solve(xn.T @ xn + 3.0 * np.eye(d), xn.T @ (t - t.mean(0)))  # xn is centred already
    np.testing.assert_allclose(w.numpy(), primal, atol=1e-9)


def test_logistic_lbfgs_matches_scikit_learn():
    train_x, train_y, test_x, _ = clusters(k=4, d=12, per_class=(15, 10), spread=0.6, seed=2)
    x, tx = standardize(train_x.double(), test_x.double())
    w, b = fit_logistic(x, train_y, 4, l2=0.5)
    ref = LogisticRegression(C=1 / 0.5, tol=1e-12, max_iter=10_000).fit(x.numpy(), train_y.numpy())
    ours = torch.softmax(tx @ w + b, 1).numpy()
    np.testing.assert_allclose(ours, ref.predict_proba(tx.numpy()), atol=1e-4)
    np.testing.assert_allclose(w.T.numpy() - w.T.numpy().mean(0), ref.coef_ - ref.coef_.mean(0), atol=1e-3)


@pytest.mark.parametrize("kwargs", [dict(method="svm"), dict(l2=0.0), dict(seeds=()), dict(shots=(0,))])
def test_bad_probe_settings_are_value_errors(kwargs):
    with pytest.raises(ValueError):
        few_shot_probe(*clusters(per_class=(5, 5)), **kwargs)


# --- features of lab models --------------------------------------------------------------

CONV = "@16 | conv(c=8,k=3),bn,relu | basic 1x8 | gap,fc"
VIT = "@16 | patch(p=4,c=32),cls,pos | mhsa(h=2) 1x32 | ln,token,fc"
DEIT = "@16 | patch(p=4,c=32),cls,dist,pos | mhsa(h=2) 1x32 | ln,distill"


@pytest.mark.parametrize("text,width", [(CONV, 8), (VIT, 32), (DEIT, 32)])
def test_features_are_the_head_without_its_classifier(text, width):
    spec = lab.parse(text)
    model = lab.build(spec, num_classes=10, in_chans=1)
    # the same network built without classes computes exactly the features
    headless = lab.build(spec, num_classes=0, in_chans=1)
    headless.load_state_dict(model.state_dict(), strict=False)
    x = torch.randn(5, 1, 16, 16)
    batches = [(x[:3], torch.tensor([0, 1, 2])), (x[3:], torch.tensor([3, 4]))]
    model.train()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    feats, labels = extract_features(model, batches, transform=lambda t: 2 * t)
    assert model.training and all(m.training for m in model.modules())  # modes restored
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())  # ran in eval: no BN updates
    assert feats.shape == (5, width) and torch.equal(labels, torch.arange(5))
    with torch.no_grad():
        torch.testing.assert_close(feats, headless.eval()(2 * x))
        if text == DEIT:  # the average of the normalized class and distillation tokens
            tokens = model.head[0](model.forward_features(2 * x))
            torch.testing.assert_close(feats, tokens[:, :2].mean(1))
        else:  # the classifier on the features gives the model's (eval) logits
            torch.testing.assert_close(model.head[-1](feats), model.eval()(2 * x))


def test_features_of_a_headless_model_are_its_output():
    model = lab.build(lab.parse(CONV), num_classes=0, in_chans=1).eval()
    x = torch.randn(2, 1, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(features(model, x), model(x))
