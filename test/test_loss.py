"""soft_infonce against a direct double loop over docs/method.md section 2, and LARS against its formula."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from class_ros.encoder.lars import LARS
from class_ros.encoder.loss import soft_infonce


def loop_loss(z: np.ndarray, w: np.ndarray, tau: float) -> float:
    """docs/method.md 2 written out element by element in float64."""
    z = z / np.linalg.norm(z, axis=1, keepdims=True)
    B = len(z)
    rows = []
    for i in range(B):
        s = [float(z[i] @ z[j]) / tau for j in range(B)]
        others = [s[k] for k in range(B) if k != i]
        lse = max(others) + math.log(sum(math.exp(v - max(others)) for v in others))
        wsum = sum(w[i][j] for j in range(B) if j != i)
        if wsum <= 0:
            continue
        rows.append(sum(w[i][j] * (s[j] - lse) for j in range(B) if j != i) / wsum)
    return -sum(rows) / len(rows) if rows else 0.0


def random_case(seed: int, B: int = 12, E: int = 5):
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(B, E))
    w = rng.uniform(size=(B, B)) * (rng.uniform(size=(B, B)) < 0.3)
    w = np.maximum(w, w.T)
    w[:3] = 0.0  # rows without positives must drop out of the mean
    w[:, :3] = 0.0
    return z, w


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("tau", [0.05, 0.5])
def test_soft_infonce_matches_double_loop(seed, tau):
    z, w = random_case(seed)
    got = soft_infonce(torch.tensor(z), torch.tensor(w), tau).item()
    assert got == pytest.approx(loop_loss(z, w, tau), rel=1e-5, abs=1e-5)


def test_diagonal_weight_is_ignored_and_rows_without_positives_drop_out():
    z, w = random_case(3)
    w_diag = w.copy()
    np.fill_diagonal(w_diag, 5.0)  # the self pair never counts, whatever the matrix says
    a = soft_infonce(torch.tensor(z), torch.tensor(w), 0.1).item()
    b = soft_infonce(torch.tensor(z), torch.tensor(w_diag), 0.1).item()
    assert a == pytest.approx(b, rel=1e-6)
    # Rows 0-2 have no positives: changing their embeddings only changes the denominators of others,
    # but their own (absent) terms add nothing; the loop reference confirms the mean is over valid rows.
    assert a == pytest.approx(loop_loss(z, w, 0.1), rel=1e-5)


def test_all_zero_weights_give_zero_with_a_graph():
    z = torch.randn(6, 4, requires_grad=True)
    loss = soft_infonce(z, torch.zeros(6, 6), 0.05)
    assert loss.item() == 0.0
    loss.backward()
    assert torch.equal(z.grad, torch.zeros_like(z))


def test_temperature_scales_the_logits():
    # One positive pair among orthogonal unit vectors: closed form -log(e^{c/t} / (e^{c/t} + (B-2)))
    B = 5
    z = torch.eye(B)
    z[1] = z[0]  # rows 0 and 1 identical -> cos 1; all others cos 0
    w = torch.zeros(B, B)
    w[0, 1] = w[1, 0] = 1.0
    for tau in (0.1, 0.2, 1.0):
        want = -math.log(math.exp(1 / tau) / (math.exp(1 / tau) + (B - 2)))
        assert soft_infonce(z, w, tau).item() == pytest.approx(want, rel=1e-5, abs=1e-6)
    assert soft_infonce(z, w, 0.05).item() < soft_infonce(z, w, 1.0).item()


def test_gradients_are_finite_and_pull_positives_together():
    z0, w = random_case(4)
    z = torch.tensor(z0, requires_grad=True)
    loss = soft_infonce(z, torch.tensor(w), 0.05)
    loss.backward()
    assert torch.isfinite(z.grad).all() and z.grad.abs().sum() > 0
    # A small step against the gradient lowers the loss.
    with torch.no_grad():
        lower = soft_infonce(z - 1e-3 * z.grad, torch.tensor(w), 0.05)
    assert lower.item() < loss.item()
    # Identical embeddings (the cosine's worst case) still give finite gradients.
    same = torch.ones(4, 3, requires_grad=True)
    soft_infonce(same, torch.ones(4, 4), 0.05).backward()
    assert torch.isfinite(same.grad).all()


def test_lars_step_matches_formula():
    torch.manual_seed(0)
    w = torch.nn.Parameter(torch.randn(4, 3))
    b = torch.nn.Parameter(torch.randn(3))
    lr, wd, mom, eta = 0.4, 1e-2, 0.9, 1e-3
    opt = LARS([w, b], lr=lr, weight_decay=wd, momentum=mom, eta=eta)
    w_np, b_np = w.detach().double().numpy().copy(), b.detach().double().numpy().copy()
    vw, vb = np.zeros_like(w_np), np.zeros_like(b_np)
    for step in range(3):
        gw, gb = torch.randn(4, 3), torch.randn(3)
        w.grad, b.grad = gw.clone(), gb.clone()
        opt.step()
        u = gw.double().numpy() + wd * w_np
        u = u * eta * np.linalg.norm(w_np) / np.linalg.norm(u)
        vw = mom * vw + u
        w_np = w_np - lr * vw
        vb = mom * vb + gb.double().numpy()  # 1-D: no decay, no trust ratio
        b_np = b_np - lr * vb
        np.testing.assert_allclose(w.detach().numpy(), w_np, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(b.detach().numpy(), b_np, rtol=1e-5, atol=1e-6)
