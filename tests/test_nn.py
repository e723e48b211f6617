"""`jaxsens.nn`: fields and `NeuralODE` are PyTrees that jit, differentiate and
serialise; gradients through them agree with finite differences and across
methods."""

import dataclasses

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import pytest

import jaxsens
from jaxsens.nn._mlp import num_params


TS = jnp.linspace(0.0, 1.0, 5)
Y0 = jnp.array([0.4, -0.2])
CONTROL = jaxsens.Control(jnp.linspace(0.0, 1.0, 6),
                          jnp.array([0.0, 1.0, -0.5, 0.3, 0.8, -1.0]))


class Wave(eqx.Module):
    """A smooth control `u(t) = sin(ω t)` (linear/cubic `Control`s have kinks at
    their samples, which make finite differences of adaptive solves noisy)."""

    omega: jax.Array

    def __call__(self, t):
        return jnp.sin(self.omega * t)[None]


WAVE = Wave(jnp.array(3.0))


class Decay(eqx.Module):
    rate: jax.Array

    def __call__(self, t, y, args):
        return -self.rate * y


def _model(method=None, rate=(0.7, 1.3), key=0):
    field = jaxsens.nn.UDE(
        Decay(jnp.array(rate)),
        jaxsens.nn.ControlledField(2, 1, width=4, depth=1, activation=jnp.tanh,
                                   key=jr.key(key)),
    )
    return jaxsens.nn.NeuralODE(field, rtol=1e-10, atol=1e-10,
                                sensitivity=method or jaxsens.Discrete())


def _loss(model_and_control):
    model, control = model_and_control
    return jnp.sum(jnp.sin(model(Y0, TS, control)))


def _flat(tree):
    return jnp.concatenate([jnp.ravel(x) for x in jax.tree_util.tree_leaves(
        eqx.filter(tree, eqx.is_inexact_array))])


@pytest.fixture(scope="module")
def grads():
    """Gradients of one loss w.r.t. the whole model by two methods."""
    out = {}
    for name, method in [("Discrete", jaxsens.Discrete()),
                         ("GaussAdjoint", jaxsens.GaussAdjoint())]:
        out[name] = eqx.filter_jit(eqx.filter_grad(_loss))((_model(method), WAVE))
    return out


def test_controlled_mlp_has_282_parameters_and_glorot_init():
    field = jaxsens.nn.ControlledField(2, 1, width=10, depth=3, activation=jax.nn.selu,
                                       init_scale=0.1, dtype=jnp.float32,
                                       key=jr.key(0))
    assert num_params(field) == 282
    for layer in field.mlp.layers:
        fan_out, fan_in = layer.weight.shape
        limit = 0.1 * np.sqrt(6.0 / (fan_in + fan_out))
        assert layer.weight.dtype == jnp.float32
        assert float(jnp.max(jnp.abs(layer.weight))) <= limit
        assert float(jnp.max(jnp.abs(layer.weight))) > 0.5 * limit
        assert not jnp.any(layer.bias)
    assert [lay.weight.shape for lay in field.mlp.layers] == [(10, 3), (10, 10),
                                                              (10, 10), (2, 10)]
    mlp_field = jaxsens.nn.MLPField(3, width=5, depth=0, key=jr.key(1))
    assert num_params(mlp_field) == 3 * 3 + 3


def test_fields_compute_what_they_say():
    model = _model()
    ude = model.field
    t = 0.35
    u = CONTROL(t)
    want = -ude.mechanistic.rate * Y0 + ude.neural.mlp(jnp.concatenate([Y0, u[None]]))
    np.testing.assert_allclose(ude(t, Y0, CONTROL), want, rtol=1e-14)
    field = jaxsens.nn.MLPField(2, width=4, depth=1, key=jr.key(2))
    np.testing.assert_allclose(field(0.0, Y0, None), field.mlp(Y0), rtol=1e-14)
    ys = eqx.filter_jit(lambda m: m(Y0, TS, CONTROL))(model)
    ref = eqx.filter_jit(lambda f: jaxsens.solve(f, Y0, TS, CONTROL, rtol=1e-10,
                                                 atol=1e-10).ys)(ude)
    np.testing.assert_allclose(ys, ref, rtol=1e-12)


def test_gradient_matches_finite_differences_and_other_method(grads):
    """d/dε loss(θ + εv) by central differences, and Discrete vs GaussAdjoint;
    θ is the field's weights, the mechanistic rates and the control's frequency."""
    params, static = eqx.partition((_model(), WAVE), eqx.is_inexact_array)
    leaves, treedef = jax.tree_util.tree_flatten(params)
    keys = jr.split(jr.key(5), len(leaves))
    v = jax.tree_util.tree_unflatten(
        treedef, [jr.normal(k, x.shape) for k, x in zip(keys, leaves, strict=True)])
    loss = jax.jit(lambda eps: _loss(eqx.combine(
        jax.tree_util.tree_map(lambda p, d: p + eps * d, params, v), static)))
    eps = 1e-4
    fd = (loss(eps) - loss(-eps)) / (2 * eps)
    for name, g in grads.items():
        directional = jnp.vdot(_flat(g), _flat(v))
        assert abs(directional - fd) <= 1e-7 * abs(fd), name
    a, b = _flat(grads["Discrete"]), _flat(grads["GaussAdjoint"])
    assert float(jnp.linalg.norm(a - b) / jnp.linalg.norm(a)) < 1e-6
    # The mechanistic rate gets a gradient too, and it is not zero.
    model_grad, wave_grad = grads["Discrete"]
    assert jnp.all(model_grad.field.mechanistic.rate != 0) and wave_grad.omega != 0


def test_filter_jit_and_serialisation_roundtrip(tmp_path):
    model = _model()
    path = tmp_path / "model.eqx"
    eqx.tree_serialise_leaves(path, model)
    other = _model(rate=(0.0, 0.0), key=9)
    assert not jnp.allclose(_flat(other), _flat(model))
    back = eqx.tree_deserialise_leaves(path, other)
    np.testing.assert_array_equal(_flat(back), _flat(model))
    jitted = eqx.filter_jit(lambda m: m(Y0, TS, CONTROL))
    np.testing.assert_array_equal(jitted(back), jitted(model))
    changed = dataclasses.replace(model, sensitivity=jaxsens.GaussAdjoint())
    assert isinstance(changed.sensitivity, jaxsens.GaussAdjoint)
    assert changed.rtol == model.rtol


def test_batched_equals_vmap():
    field = jaxsens.nn.ControlledField(2, 1, width=4, depth=1, activation=jnp.tanh,
                                       key=jr.key(0))
    model = jaxsens.nn.NeuralODE(field, rtol=1e-10, atol=1e-10,
                                 sensitivity=jaxsens.Discrete())
    ts_u = jnp.linspace(0.0, 1.0, 6)
    controls = jax.vmap(lambda v: jaxsens.Control(ts_u, v))(
        jr.normal(jr.key(1), (3, 6)))
    y0s = jnp.array([[0.1, 0.2], [0.0, -0.3], [0.5, 0.5]])
    per_member = eqx.filter_jit(
        lambda m, y, c: jax.vmap(m, in_axes=(0, None, 0))(y, TS, c))
    via_vmap = per_member(model, y0s, controls)
    shared = eqx.filter_jit(lambda m, y, c: m.batched(y, TS, c))(model, y0s, controls)
    assert shared.shape == (3, 5, 2)
    # Different step sequences; the linear control's kinks limit agreement to ~1e-8.
    np.testing.assert_allclose(shared, via_vmap, rtol=1e-6, atol=1e-7)
    one_y0 = eqx.filter_jit(lambda m, c: m.batched(y0s[0], TS, c, y0_axis=None))(
        model, controls)
    np.testing.assert_allclose(one_y0[0], via_vmap[0], rtol=1e-6, atol=1e-7)


def test_errors():
    with pytest.raises(ValueError, match="`MLPField\\(width=...\\)` must be a pos"):
        jaxsens.nn.MLPField(2, width=0, key=jr.key(0))
    with pytest.raises(ValueError, match="`ControlledField\\(depth=...\\)` must be"):
        jaxsens.nn.ControlledField(2, 1, depth=-1, key=jr.key(0))
    field = jaxsens.nn.MLPField(2, width=3, depth=1, key=jr.key(0))
    with pytest.raises(ValueError, match="expects a state of shape \\(2,\\)"):
        field(0.0, jnp.zeros(3), None)
    cfield = jaxsens.nn.ControlledField(2, 1, width=3, depth=1, key=jr.key(0))
    with pytest.raises(TypeError, match="reads the control from `args`"):
        cfield(0.0, Y0, None)
    with pytest.raises(ValueError, match="expects a state of shape \\(2,\\)"):
        cfield(0.0, jnp.zeros(4), CONTROL)
    with pytest.raises(ValueError, match="control_size=1\\)` got a control with 2"):
        cfield(0.0, Y0, lambda t: jnp.ones(2))
    with pytest.raises(TypeError, match="`UDE\\(neural=...\\)` must be a vector field"):
        jaxsens.nn.UDE(field, 3.0)
    with pytest.raises(TypeError, match="needs a vector field"):
        jaxsens.nn.NeuralODE(jnp.ones(2))
    # The settings are checked when the model is built, as `solve` checks them.
    with pytest.raises(ValueError, match="`max_steps` must be a positive int"):
        jaxsens.nn.NeuralODE(cfield, max_steps=0)
    with pytest.raises(ValueError, match="`rtol` must be positive"):
        jaxsens.nn.NeuralODE(cfield, rtol=-1.0)
    with pytest.raises(TypeError, match="`solver` must be a diffrax solver"):
        jaxsens.nn.NeuralODE(cfield, solver="tsit5")
    model = jaxsens.nn.NeuralODE(cfield)
    with pytest.raises(ValueError, match="`y0_axis` must be 0 or None"):
        model.batched(Y0, TS, CONTROL, y0_axis=1)
    with pytest.raises(TypeError, match="needs a vector field"):
        jaxsens.batched_field("not a field")
