"""`jaxsens.sharded`: the batched loss split over 4 (forced host) devices gives the
one-device gradient. Runs in a subprocess: the device count is fixed when JAX
starts, and the rest of the suite runs on one device."""

import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import pytest

import jaxsens
from tests import child_env


SCRIPT = textwrap.dedent(
    """
    import os
    os.environ["XLA_FLAGS"] += " --xla_force_host_platform_device_count=4"
    import jaxsens
    jaxsens.compile_small_loops_whole()  # keeps the 4-device flag, adds its own
    import jax, jax.numpy as jnp, jax.random as jr, equinox as eqx
    jax.config.update("jax_enable_x64", True)

    assert jax.device_count() == 4
    field = jaxsens.nn.ControlledField(2, 1, width=4, depth=1, key=jr.key(0))
    ts = jnp.linspace(0.0, 1.0, 4)
    controls = jax.vmap(lambda v: jaxsens.Control(jnp.linspace(0.0, 1.0, 5), v))(
        jr.normal(jr.key(1), (8, 5)))

    def make(method):
        def batch_loss(field, controls):
            ys = jax.vmap(lambda u: jaxsens.solve(field, jnp.zeros(2), ts, u,
                                                  rtol=1e-10, atol=1e-10,
                                                  sensitivity=method).ys)(controls)
            return jnp.sum(jnp.sin(ys))
        return batch_loss

    def flat(tree):
        return jnp.concatenate([jnp.ravel(x) for x in jax.tree_util.tree_leaves(tree)])

    params, static = eqx.partition(field, eqx.is_inexact_array)

    def grad_fn(loss):
        return jax.jit(jax.grad(lambda p, c: loss(eqx.combine(p, static), c)))

    one = grad_fn(make(jaxsens.Discrete()))(params, controls)
    for method in (jaxsens.Discrete(), jaxsens.GaussAdjoint()):
        fn = grad_fn(jaxsens.sharded(make(method)))
        lowered = fn.lower(params, controls)
        assert '{"batch"}' in lowered.as_text()
        # The compiled program really is split: each device holds 2 of the 8
        # controls (shape [2,5]) and the [8,5] batch appears nowhere.
        compiled = lowered.compile()
        hlo = compiled.as_text()
        assert "f64[2,5]" in hlo and "f64[8,5]" not in hlo
        four = compiled(params, controls)
        err = jnp.linalg.norm(flat(four) - flat(one)) / jnp.linalg.norm(flat(one))
        print(type(method).__name__, float(err))
        assert err < 1e-6, (method, err)
    try:
        jaxsens.sharded(make(jaxsens.Discrete()))(field, jax.tree_util.tree_map(
            lambda x: x[:6], controls))
    except ValueError as e:
        assert "not divisible by the 4 devices" in str(e)
        print("indivisible: ok")
    """
)


def test_sharded_gradient_equals_one_device():
    out = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True,
                         text=True, env=child_env(), timeout=600)
    assert out.returncode == 0, out.stderr[-4000:]
    assert "Discrete" in out.stdout and "GaussAdjoint" in out.stdout
    assert "indivisible: ok" in out.stdout


def test_errors_on_one_device():
    def loss(shared, batch):
        return jnp.sum(shared * batch["a"])

    with pytest.raises(TypeError, match="must be callable"):
        jaxsens.sharded(3)
    mesh = jax.make_mesh((1,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
    with pytest.raises(ValueError, match="is not an axis of the mesh"):
        jaxsens.sharded(loss, mesh=mesh, axis_name="batch")(1.0, {"a": jnp.ones(2)})
    with pytest.raises(ValueError, match="same leading \\(batch\\)"):
        jaxsens.sharded(loss)(1.0, {"a": jnp.ones(2), "b": jnp.ones(3)})
    assert jaxsens.sharded(loss, mesh=mesh)(2.0, {"a": jnp.ones(3)}) == 6.0
