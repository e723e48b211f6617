"""`jaxsens.collocation`: the smoother (exact on quadratics, accurate on noisy
data), the collocation loss, Lotka–Volterra parameters from noisy data by
collocation and then shooting, and every error."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxsens
from jaxsens.collocation import (
    Smoothing,
    collocation_loss,
    fit,
    smooth,
    two_stage_fit,
)


def lv(t, y, theta):
    a, b, c, d = theta
    x, z = y
    return jnp.stack([a * x - b * x * z, -c * z + d * x * z])


THETA = jnp.array([1.5, 1.0, 3.0, 1.0])
THETA0 = jnp.array([1.0, 0.7, 2.0, 0.7])  # 30-35% off in every parameter

# Uneven sample times, and data that are exactly quadratic in t.
TQ = jnp.sort(jax.random.uniform(jax.random.key(3), (15,), minval=0.0, maxval=3.0))
QUAD = jnp.stack([1 + 2 * TQ + 3 * TQ**2, 0.5 - TQ**2], axis=1)
DQUAD = jnp.stack([2 + 6 * TQ, -2 * TQ], axis=1)


def rel_err(a, b):
    a, b = np.asarray(a), np.asarray(b)
    return np.max(np.abs(a - b)) / np.max(np.abs(b))


def test_local_quadratic_reproduces_quadratics_exactly():
    # Exact for any bandwidth: a wrong derivative scaling (1/h) or offset shows.
    for bandwidth in (None, 0.3, 2.0):
        sm = smooth(TQ, QUAD, bandwidth=bandwidth)
        assert np.max(np.abs(np.asarray(sm.u - QUAD))) < 1e-9
        assert np.max(np.abs(np.asarray(sm.du - DQUAD))) < 1e-8
    assert float(smooth(TQ, QUAD, bandwidth=0.3).bandwidth) == 0.3
    # Local linear is exact on lines only.
    line = QUAD[:, :1] - 3 * TQ[:, None] ** 2
    sm1 = smooth(TQ, line, bandwidth=0.5, degree=1)
    assert np.max(np.abs(np.asarray(sm1.du[:, 0] - 2))) < 1e-9


def test_smoother_on_noisy_sine_and_collocation_loss():
    ts = jnp.linspace(0.0, 2 * jnp.pi, 63)
    clean = jnp.stack([jnp.sin(ts), jnp.cos(ts)], axis=1)
    noisy = clean + 0.05 * jax.random.normal(jax.random.key(0), clean.shape)
    sm = smooth(ts, noisy)
    inner = slice(5, -5)
    slope = jnp.stack([jnp.cos(ts), -jnp.sin(ts)], axis=1)
    # Denoised (noise RMS 0.05), and the derivatives are usable.
    assert float(jnp.sqrt(jnp.mean((sm.u - clean) ** 2))) < 0.03
    assert float(jnp.sqrt(jnp.mean((sm.du[inner] - slope[inner]) ** 2))) < 0.15
    # Cross-validation picked an interior bandwidth (neither grid end).
    gap = float(ts[1] - ts[0])
    assert 0.6 * gap * 1.01 < float(sm.bandwidth) < float(ts[-1] - ts[0]) / 2 * 0.99
    # The loss is the mean squared slope mismatch, and is smallest near the truth.
    rotation = lambda t, y, w: w * jnp.stack([y[1], -y[0]])
    manual = jnp.mean((sm.du - jax.vmap(rotation, (0, 0, None))(ts, sm.u, 1.2)) ** 2)
    assert abs(float(collocation_loss(rotation, sm, 1.2) - manual)) < 1e-14
    losses = [float(collocation_loss(rotation, sm, w)) for w in (0.8, 1.0, 1.2)]
    assert losses[1] < min(losses[0], losses[2])


def test_lotka_volterra_collocation_then_shooting():
    # ~8 periods, 241 samples, 2% multiplicative noise; start 30-35% off.
    ts = jnp.linspace(0.0, 30.0, 241)
    clean = jaxsens.solve(lv, jnp.array([1.0, 1.0]), ts, THETA, rtol=1e-10,
                          atol=1e-10).ys
    data = clean * (1 + 0.02 * jax.random.normal(jax.random.key(0), clean.shape))
    res = two_stage_fit(
        lv, ts, data, THETA0, n_segments=60, collocation_steps=500,
        shooting_steps=100, collocation_optimizer=optax.adam(0.1),
        shooting_optimizer=optax.adam(0.01), sensitivity=jaxsens.Forward(),
    )
    colloc_err = float(np.max(np.abs(res.collocation.args / THETA - 1)))
    final_err = float(np.max(np.abs(res.model.args / THETA - 1)))
    assert colloc_err < 0.1       # approximately, with no ODE solve at all
    assert final_err < 0.01       # shooting removes collocation's bias
    assert final_err < colloc_err / 3
    # Collocation converged (its loss flattened): the bias is not under-training.
    c = res.collocation.losses
    assert abs(float(c[-1] - c[-50])) < 1e-6 * float(c[-1])
    assert res.losses.shape == (100,) and float(res.losses[-1]) < float(res.losses[0])
    # The refined model starts from the smoothed data, not the noisy samples.
    assert res.model.starts.shape == (60, 2)


def test_fit_on_exact_data_recovers_decay_rates():
    data = jnp.stack([jnp.exp(-2.0 * TQ), 3 * jnp.exp(-0.5 * TQ)], axis=1)
    res = fit(lambda t, y, k: -k * y, TQ, data, jnp.array([1.0, 1.0]), steps=300,
              optimizer=optax.adam(0.05))
    sm = res.smoothing
    # The optimiser reached the collocation loss's minimiser (least squares in k)...
    best = -jnp.sum(sm.du * sm.u, axis=0) / jnp.sum(sm.u**2, axis=0)
    assert rel_err(res.args, best) < 1e-4
    # ...which is near the truth (the smoother's bias on 15 uneven samples).
    assert rel_err(res.args, jnp.array([2.0, 0.5])) < 0.1
    assert isinstance(sm, Smoothing)


def test_errors():
    with pytest.raises(ValueError, match="Too few samples for the smoother: got 4"):
        smooth(TQ[:4], QUAD[:4])
    with pytest.raises(ValueError, match="Too few samples for the smoother: got 4"):
        fit(lv, TQ[:4], QUAD[:4], THETA0)
    with pytest.raises(ValueError, match="one sample per time"):
        smooth(TQ, QUAD[:-1])
    with pytest.raises(ValueError, match="`ts` must be a 1-D array"):
        smooth(TQ[None], QUAD)
    with pytest.raises(ValueError, match="`degree` must be an int >= 1"):
        smooth(TQ, QUAD, degree=0)
    with pytest.raises(ValueError, match="`bandwidth` must be positive"):
        smooth(TQ, QUAD, bandwidth=0.0)
    with pytest.raises(Exception, match="`data` contains NaN or inf"):
        smooth(TQ, QUAD.at[2, 0].set(jnp.inf))
    with pytest.raises(Exception, match="`ts` must be finite and strictly increasing"):
        smooth(TQ.at[1].set(TQ[0]), QUAD)
    with pytest.raises(Exception, match="`bandwidth` is too small"):
        smooth(TQ, QUAD, bandwidth=1e-4)
    with pytest.raises(TypeError, match="`smoothing` must come from"):
        collocation_loss(lv, (TQ, QUAD), THETA0)
    with pytest.raises(ValueError, match="`steps` must be a positive int"):
        fit(lv, TQ, QUAD, THETA0, steps=0)
    with pytest.raises(ValueError, match="`shooting_steps` must be a positive int"):
        two_stage_fit(lv, TQ, QUAD, THETA0, shooting_steps=0)
    with pytest.raises(ValueError, match="more segments than the 14 intervals"):
        two_stage_fit(lv, TQ, QUAD, THETA0, n_segments=20, collocation_steps=1)
