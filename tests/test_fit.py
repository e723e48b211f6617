"""`jaxsens.fit`: trains, compiles its step once, calls back, resumes, saves/loads."""

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import optax
import pytest

import jaxsens


TS = jnp.linspace(0.0, 1.0, 6)
TRACES = {"n": 0}


class Line(eqx.Module):
    slope: jax.Array
    offset: jax.Array
    name: str = "line"


X = jnp.linspace(-1.0, 1.0, 8)
Y = 2.0 * X - 0.5


def line_loss(model, data):
    TRACES["n"] += 1  # runs only while tracing
    x, y = data
    return jnp.mean((model.slope * x + model.offset - y) ** 2)


def test_fits_a_neural_ode_and_does_not_recompile(tmp_path):
    target = jnp.stack([jnp.exp(-TS), 0.5 * jnp.exp(-2 * TS)], axis=1)
    model = jaxsens.nn.NeuralODE(
        jaxsens.nn.MLPField(2, width=8, depth=1, key=jr.key(0)),
        rtol=1e-5, atol=1e-5, sensitivity=jaxsens.Discrete())
    traces = []

    def loss(m, y):
        traces.append(1)
        return jnp.mean((m(jnp.array([1.0, 0.5]), TS) - y) ** 2)

    result = jaxsens.fit(model, loss, target, optax.adam(3e-2), steps=25,
                         progress=False)
    assert len(traces) == 1  # traced (compiled) once for 25 steps
    assert result.losses.shape == (25,)
    assert result.losses[-1] < 0.3 * result.losses[0]
    # Resuming with the same loss, optimiser and shapes reuses the compiled step.
    again = jaxsens.fit(result.model, loss, target, optax.adam(3e-2), steps=3,
                        opt_state=result.opt_state, progress=False)
    assert len(again.losses) == 3
    path = tmp_path / "node.eqx"
    jaxsens.save_model(path, again.model)
    back = jaxsens.load_model(path, model)
    for a, b in zip(jax.tree_util.tree_leaves(eqx.filter(back, eqx.is_array)),
                    jax.tree_util.tree_leaves(eqx.filter(again.model, eqx.is_array)),
                    strict=True):
        np.testing.assert_array_equal(a, b)


def test_one_trace_for_many_steps_callback_and_early_stop(capsys):
    TRACES["n"] = 0
    seen = []
    optimizer = optax.sgd(0.3)
    result = jaxsens.fit(Line(jnp.array(0.0), jnp.array(0.0)), line_loss, (X, Y),
                         optimizer, steps=60,
                         callback=lambda step, m, loss: seen.append((step, loss)))
    assert TRACES["n"] == 1
    assert [s for s, _ in seen] == list(range(60))
    np.testing.assert_allclose([v for _, v in seen], result.losses)
    np.testing.assert_allclose(result.model.slope, 2.0, rtol=1e-3)
    np.testing.assert_allclose(result.model.offset, -0.5, rtol=1e-3)
    assert "loss=" in capsys.readouterr().err  # the progress bar shows the loss
    # Same loss and optimiser objects and shapes: no new trace.
    stopped = jaxsens.fit(result.model, line_loss, (X, Y), optimizer, steps=50,
                          callback=lambda step, m, loss: step == 4, progress=False)
    assert TRACES["n"] == 1 and len(stopped.losses) == 5


def test_iterator_data_and_frozen_leaves():
    batches = iter([(X[:4], Y[:4]), (X[4:], Y[4:])] * 20)
    model = Line(jnp.array(0.0), jnp.array(1.0))
    spec = eqx.tree_at(lambda m: m.slope,  # train the slope only
                       jax.tree_util.tree_map(lambda _: False, model), True)
    result = jaxsens.fit(model, line_loss, batches, optax.adam(0.1), steps=40,
                         filter_spec=spec, progress=False)
    assert float(result.model.offset) == 1.0
    assert float(result.model.slope) != 0.0


def test_errors(tmp_path):
    model = Line(jnp.array(0.0), jnp.array(0.0))
    opt = optax.sgd(0.1)
    with pytest.raises(ValueError, match="non-negative int"):
        jaxsens.fit(model, line_loss, (X, Y), opt, steps=-1)
    with pytest.raises(TypeError, match="must be an optax optimiser"):
        jaxsens.fit(model, line_loss, (X, Y), "adam", steps=1)
    with pytest.raises(TypeError, match="`fit\\(loss_fn=...\\)` must be callable"):
        jaxsens.fit(model, None, (X, Y), opt, steps=1)
    with pytest.raises(ValueError, match="must return a scalar"):
        jaxsens.fit(model, lambda m, d: m.slope * d[0], (X, Y), opt, steps=1,
                    progress=False)
    with pytest.raises(ValueError, match="no trainable leaves"):
        jaxsens.fit(Line(0.0, 1.0), line_loss, (X, Y), opt, steps=1)
    with pytest.raises(FileNotFoundError, match="no saved model"):
        jaxsens.load_model(tmp_path / "missing.eqx", model)
    path = tmp_path / "line.eqx"
    jaxsens.save_model(path, model)
    with pytest.raises(ValueError, match="does not match the structure"):
        jaxsens.load_model(path, (jnp.zeros(3), jnp.zeros(2), jnp.zeros(1)))
