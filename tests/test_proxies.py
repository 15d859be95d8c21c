"""Zero-cost proxies against values computed by hand (numpy, closed forms) on a tiny network."""

import numpy as np
import pytest
import torch
from torch import nn

from lab.data import load_dataset
from lab.grammar import parse
from lab.train import proxies

W1 = np.array([[0.5, -1.0], [-0.3, 0.8], [1.2, 0.4]])
B1 = np.array([0.1, -0.2, 0.05])
W2 = np.array([[0.7, -0.5, 0.2], [-0.1, 0.9, -0.6]])
B2 = np.array([0.3, -0.4])
X = np.array([[1.0, 2.0], [-1.0, 0.5], [0.3, -0.7]])
Y = np.array([0, 1, 1])


def _mlp() -> nn.Module:
    net = nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 2))
    with torch.no_grad():
        for p, v in zip(net.parameters(), (W1, B1, W2, B2)):
            p.copy_(torch.tensor(v))
    return net


def _batch():
    return torch.tensor(X, dtype=torch.float32), torch.tensor(Y)


def _gradients() -> list[np.ndarray]:
    """dL/dtheta of the mean cross-entropy, by hand: (W1, b1, W2, b2)."""
    pre = X @ W1.T + B1
    h = np.maximum(pre, 0)
    z = h @ W2.T + B2
    p = np.exp(z - z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    dz = (p - np.eye(2)[Y]) / len(X)
    dh = dz @ W2 * (pre > 0)
    return [dh.T @ X, dh.sum(0), dz.T @ h, dz.sum(0)]


def test_synflow_is_the_closed_form_of_the_positive_network():
    a1, c1, a2, c2 = np.abs(W1), np.abs(B1), np.abs(W2), np.abs(B2)
    h = a1 @ np.ones(2) + c1                  # all positive: the ReLU passes everything
    into = a2.sum(0)                          # dR/dh_j = sum_i |W2_ij|
    expected = (a2 * h).sum() + c2.sum() + (a1 * into[:, None]).sum() + (c1 * into).sum()
    x, _ = _batch()
    assert proxies.synflow(_mlp(), x) == pytest.approx(expected, rel=1e-6)   # float32 weights, float64 pass


def test_naswot_is_the_log_determinant_of_the_agreement_kernel():
    codes = (X @ W1.T + B1 > 0).astype(float)
    kernel = codes @ codes.T + (1 - codes) @ (1 - codes).T
    expected = np.linalg.slogdet(kernel)[1]
    x, _ = _batch()
    assert proxies.naswot(_mlp(), x) == pytest.approx(expected, rel=1e-9)


def test_grad_norm_and_snip_from_the_hand_computed_gradient():
    grads = _gradients()
    x, y = _batch()
    assert proxies.grad_norm(_mlp(), x, y) == pytest.approx(sum(np.linalg.norm(g) for g in grads), rel=1e-5)
    snip = sum(np.abs(w * g).sum() for w, g in zip((W1, B1, W2, B2), grads))
    assert proxies.snip(_mlp(), x, y) == pytest.approx(snip, rel=1e-5)


def test_scoring_leaves_the_model_and_torchs_random_state_alone():
    net = _mlp()
    before = [p.detach().clone() for p in net.parameters()]
    x, y = _batch()
    scores = proxies.score(net, x, y)
    assert set(scores) == set(proxies.PROXIES) and all(v is not None and s >= 0 for v, s in scores.values())
    assert all(torch.equal(a, b) for a, b in zip(before, net.parameters()))
    assert all(p.grad is None for p in net.parameters())
    data = load_dataset("mnist5k", seed=0, fraction=0.02)
    torch.manual_seed(3)
    expected = torch.rand(3)
    torch.manual_seed(3)
    proxies.score_point(parse("@28 | conv(c=8,k=3,s=2),bn,relu | basic 1x8 | gap,fc"), data, seed=0)
    assert torch.equal(torch.rand(3), expected)


def test_naswot_sees_functional_activations_and_every_kind_scores():
    # convnext's MLP calls F.gelu (no module to hook): its codes count too
    data = load_dataset("mnist5k", seed=0, fraction=0.02)
    for text in ("@28 | conv(c=8,k=3,s=2),bn,relu | convnext 1x8 | gap,ln,fc",
                 "@28 | patch(p=7,c=16),pos | mhsa(hd=8) 1x16 | ln,gap,fc",
                 "@28 | patch(p=4,c=16),pos | nat(k=3,hd=8) 1x16 | swin(w=7,hd=8) 1x16 | ln,gap,fc"):
        scores = proxies.score_point(parse(text), data, seed=0)
        assert all(scores[p][0] is not None for p in proxies.PROXIES), (text, scores)
    x = torch.randn(4, 2)
    gelu_only = nn.Sequential(nn.Linear(2, 8), nn.GELU(), nn.Linear(8, 2))
    assert proxies.naswot(gelu_only, x) > 0


def test_a_proxy_that_cannot_be_computed_is_none():
    class NoActivation(nn.Module):
        def forward(self, x):
            return x @ torch.ones(2, 2)

    x, y = _batch()
    scores = proxies.score(NoActivation(), x, y, which=("naswot", "grad_norm"))
    assert scores["naswot"][0] is None and scores["grad_norm"][0] is None   # no activation; no parameters
