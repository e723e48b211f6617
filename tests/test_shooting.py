"""`jaxsens.shooting`: the loss's bookkeeping (every datum once, continuity weight),
gradients against finite differences with two sensitivity methods, a long-horizon
Lotka–Volterra fit where single shooting stalls and multiple shooting recovers the
parameters, and every error."""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jaxsens
from jaxsens.shooting import (
    ShootingModel,
    init_model,
    multiple_shooting_loss,
    predict_segments,
    segment_bounds,
)


def lv(t, y, theta):
    a, b, c, d = theta
    x, z = y
    return jnp.stack([a * x - b * x * z, -c * z + d * x * z])


THETA = jnp.array([1.5, 1.0, 3.0, 1.0])
THETA0 = jnp.array([1.0, 0.7, 2.0, 0.7])  # 30-35% off in every parameter
TOL = dict(rtol=1e-10, atol=1e-10)


def rel_err(a, b):
    a, b = np.asarray(a), np.asarray(b)
    return np.max(np.abs(a - b)) / np.max(np.abs(b))


def trajectory(ts):
    return jaxsens.solve(lv, jnp.array([1.0, 1.0]), ts, THETA, **TOL).ys


# --- a small record cut unevenly: 12 samples, 3 segments of 4, 3, 4 intervals --

TS = jnp.linspace(0.0, 5.5, 12)
S = 3


@pytest.fixture(scope="module")
def small():
    """The data, and one compiled function giving the loss and the segments."""
    data = trajectory(TS)

    @eqx.filter_jit
    def compiled(model, data, weight):
        loss = multiple_shooting_loss(model, TS, data, S, weight, **TOL)
        return loss, predict_segments(model, TS, S, **TOL)

    def evaluate(model, data, weight):  # an array weight: one compilation
        return compiled(model, data, jnp.asarray(weight, data.dtype))

    return data, evaluate


def test_segment_bounds_and_padding(small):
    assert segment_bounds(12, 3).tolist() == [0, 4, 7, 11]
    assert segment_bounds(2, 1).tolist() == [0, 1]
    assert segment_bounds(7, 6).tolist() == list(range(7))
    data, evaluate = small
    model = init_model(lv, TS, data, S, args=THETA)
    times, ys, valid = evaluate(model, data, 1.0)[1]
    assert times.shape == (3, 5) and ys.shape == (3, 5, 2)
    assert valid.tolist() == [[True] * 5, [True] * 4 + [False], [True] * 5]
    # The padded segment saves past its end at increasing times.
    assert np.all(np.diff(np.asarray(times), axis=1) > 0)
    # Exact starts: every valid sample reproduces the single-shot trajectory.
    index = np.array([[0, 1, 2, 3, 4], [4, 5, 6, 7, 7], [7, 8, 9, 10, 11]])
    assert rel_err(np.asarray(ys)[valid], np.asarray(data[index])[valid]) < 1e-7


def test_each_datum_counted_once_and_continuity_weight(small):
    data, evaluate = small

    def value(m, d, w):
        return evaluate(m, d, w)[0]

    exact = init_model(lv, TS, data, S, args=THETA)
    assert float(value(exact, data, 3.0)) < 1e-14
    n_values = data.size
    # Perturbing one datum by δ adds exactly δ²/(T·n), for an inner sample, a
    # segment boundary (shared by two segments) and the final sample alike.
    delta = 0.1
    for i in (2, 4, 7, 11):
        bumped = data.at[i, 0].add(delta)
        model = init_model(lv, TS, data, S, args=THETA)  # starts from clean data
        got = float(value(model, bumped, 3.0))
        assert abs(got - delta**2 / n_values) < 1e-10
    # Moving a start state by δ changes the data term on its segment and both of
    # its continuity gaps (to the previous segment's end: δ; to the next
    # segment's start), the gaps weighted by `continuity_weight`.
    moved = ShootingModel(lv, exact.starts.at[1, 1].add(delta), THETA)
    got, (_, moved_ys, _) = evaluate(moved, data, 3.0)
    got = float(got)
    moved_seg = moved_ys[1]
    data_term = float(jnp.sum((moved_seg[:3] - data[4:7]) ** 2)) / n_values
    next_gap = float(jnp.sum((moved_seg[3] - data[7]) ** 2))
    want = data_term + 3.0 * (delta**2 + next_gap) / ((S - 1) * 2)
    assert abs(got - want) < 1e-7 * want  # the two solves differ at ~1e-11
    assert next_gap > 1e-4 and data_term > 1e-4  # both pieces present


@pytest.mark.parametrize(
    "sensitivity",
    [jaxsens.Forward(), jaxsens.InterpolatingAdjoint()],
    ids=["forward", "interpolating"],
)
def test_gradient_matches_finite_differences(small, sensitivity):
    data, evaluate = small

    def value(m, d, w):
        return evaluate(m, d, w)[0]

    noisy = data * (1 + 0.05 * jax.random.normal(jax.random.key(1), data.shape))
    model = init_model(lv, TS, noisy, S, args=THETA0)  # continuity gaps are open
    grad = eqx.filter_jit(eqx.filter_grad(lambda m: multiple_shooting_loss(
        m, TS, noisy, S, 2.0, sensitivity=sensitivity, **TOL)))(model)
    h = 1e-6
    fd_args = [
        (value(ShootingModel(lv, model.starts, THETA0.at[i].add(h)), noisy, 2.0)
         - value(ShootingModel(lv, model.starts, THETA0.at[i].add(-h)), noisy, 2.0))
        / (2 * h) for i in range(4)
    ]
    fd_starts = [
        (value(ShootingModel(lv, model.starts.at[k, j].add(h), THETA0), noisy, 2.0)
         - value(ShootingModel(lv, model.starts.at[k, j].add(-h), THETA0), noisy, 2.0))
        / (2 * h) for k in range(S) for j in range(2)
    ]
    assert rel_err(grad.args, fd_args) < 1e-5
    assert rel_err(grad.starts.ravel(), fd_starts) < 1e-5


def test_long_horizon_single_shooting_stalls_multiple_shooting_recovers():
    # Lotka–Volterra over ~8 periods, 2% noise, every parameter 30-35% off.
    ts = jnp.linspace(0.0, 30.0, 61)
    clean = trajectory(ts)
    data = clean * (1 + 0.02 * jax.random.normal(jax.random.key(0), clean.shape))

    def train(n_segments):
        model = init_model(lv, ts, data, n_segments, args=THETA0)
        loss = lambda m: multiple_shooting_loss(
            m, ts, data, n_segments, 1.0, sensitivity=jaxsens.Forward())
        result = jaxsens.fit(model, lambda m, _: loss(m), None, optax.adam(0.05), 200,
                             progress=False)
        return result.model, result.losses

    single, single_losses = train(1)
    multi, multi_losses = train(30)
    single_err = float(np.max(np.abs(single.args / THETA - 1)))
    multi_err = float(np.max(np.abs(multi.args / THETA - 1)))
    assert single_err > 0.3          # stuck in a local minimum
    assert multi_err < 0.03          # recovered
    # Single shooting had converged (not merely slow): its loss stopped moving.
    assert abs(float(single_losses[-1] - single_losses[-20])) < 1e-3 * float(
        single_losses[-1])
    # The recovered parameters fit the whole record from t0 in one shot.
    refit = jaxsens.solve(lv, multi.starts[0], ts, multi.args).ys
    assert float(jnp.sqrt(jnp.mean((refit - clean) ** 2))) < 0.1


# --- errors -------------------------------------------------------------------


def test_errors():
    data = trajectory(TS)
    model = init_model(lv, TS, data, S, args=THETA)
    with pytest.raises(ValueError, match="more segments than the 11 intervals"):
        init_model(lv, TS, data, 12)
    with pytest.raises(ValueError, match="more segments than the 11 intervals"):
        multiple_shooting_loss(model, TS, data, 12)
    with pytest.raises(ValueError, match="`n_segments` must be >= 1"):
        segment_bounds(12, 0)
    with pytest.raises(TypeError, match="`n_segments` must be an int"):
        segment_bounds(12, 2.0)
    with pytest.raises(ValueError, match="at least 2 observation times"):
        init_model(lv, TS[:1], data[:1], 1)
    with pytest.raises(ValueError, match=r"`data` must have shape `\(len\(ts\)"):
        init_model(lv, TS, data[:-1], S)
    with pytest.raises(ValueError, match=r"`data` must have shape `\(len\(ts\)"):
        init_model(lv, TS, data[:, 0], S)
    with pytest.raises(ValueError, match="`ts` must be a 1-D array"):
        init_model(lv, TS[None], data, S)
    with pytest.raises(ValueError, match="`ts` must be 1-D"):
        predict_segments(model, TS[None], S)
    with pytest.raises(ValueError, match="3 segment start states but `n_segments=4`"):
        multiple_shooting_loss(model, TS, data, 4)
    with pytest.raises(ValueError, match=r"states of shape \(2,\) but `data` holds"):
        multiple_shooting_loss(model, TS, data[:, :1], S)
    with pytest.raises(TypeError, match="must be a `jaxsens.shooting.ShootingModel`"):
        multiple_shooting_loss((lv, THETA), TS, data, S)
    with pytest.raises(ValueError, match="`continuity_weight` must be >= 0"):
        multiple_shooting_loss(model, TS, data, S, -1.0)
    with pytest.raises(Exception, match="`data` contains NaN or inf"):
        init_model(lv, TS, data.at[3, 1].set(jnp.nan), S)
    with pytest.raises(Exception, match="`ts` must be finite and strictly increasing"):
        init_model(lv, TS.at[3].set(TS[2]), data, S)
