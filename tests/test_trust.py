"""A failed solve never yields a gradient that looks valid, under every transform.

The failure here is a step budget of 2 (linear methods: a NaN in `A`, or a
Krylov substep budget of 1). With `throw=True` every transform raises, whatever
the loss uses of `ys`; with `throw=False` the derivative is NaN.
"""

import equinox as eqx
import jax
import jax.numpy as jnp
import pytest

import jaxsens


RUNTIME_ERRORS = (eqx.EquinoxRuntimeError, jax.errors.JaxRuntimeError)
Y0 = jnp.array([1.0, 2.0])
TS = jnp.linspace(0.0, 1.0, 4)
LINEAR = jaxsens.LinearField(lambda k: jnp.array([[-k, 0.2], [0.1, -1.0]]))


def decay(t, y, k):
    return -k * y


# name -> (method, field, good k, bad k, extra solve keywords)
CASES = {
    "Discrete": (jaxsens.Discrete(), decay, 1.0, 1.0, {"max_steps": 2}),
    "Discrete(forward_mode=True)": (jaxsens.Discrete(forward_mode=True), decay, 1.0,
                                    1.0, {"max_steps": 2}),
    "Forward": (jaxsens.Forward(), decay, 1.0, 1.0, {"max_steps": 2}),
    "BacksolveAdjoint": (jaxsens.BacksolveAdjoint(), decay, 1.0, 1.0, {"max_steps": 2}),
    "InterpolatingAdjoint": (jaxsens.InterpolatingAdjoint(), decay, 1.0, 1.0,
                             {"max_steps": 2}),
    "QuadratureAdjoint": (jaxsens.QuadratureAdjoint(), decay, 1.0, 1.0, {"max_steps": 2}),
    "GaussAdjoint": (jaxsens.GaussAdjoint(), decay, 1.0, 1.0, {"max_steps": 2}),
    "Auto": (jaxsens.Auto(), decay, 1.0, 1.0, {"max_steps": 2}),
    "LinearExpm": (jaxsens.LinearExpm(), LINEAR, 1.0, jnp.nan, {}),
    "KrylovExpm": (jaxsens.KrylovExpm(krylov_dim=2, max_substeps=1), LINEAR, 1.0,
                   1e3, {}),
}
FORWARD_MODE = {"Discrete(forward_mode=True)", "Forward", "Auto", "LinearExpm"}


def make(name, throw, bad):
    method, field, good_k, bad_k, kw = CASES[name]
    if not bad:
        kw = {}
        if name == "KrylovExpm":  # its failure is the substep budget itself
            method = jaxsens.KrylovExpm(krylov_dim=2)

    def ys(k):
        k = k * (bad_k / good_k if bad and name in ("LinearExpm", "KrylovExpm") else 1)
        return jaxsens.solve(field, Y0, TS, k, sensitivity=method, throw=throw, **kw).ys

    return ys, good_k


TRANSFORMS = {
    "jit(grad(sum))": lambda ys: jax.jit(jax.grad(lambda k: jnp.sum(ys(k)))),
    "jit(grad(last entry))": lambda ys: jax.jit(jax.grad(lambda k: ys(k)[-1, 0])),
    "value_and_grad(MSE)": lambda ys: jax.value_and_grad(
        lambda k: jnp.mean((ys(k) - 0.5) ** 2)),
    "jit(jacrev)": lambda ys: jax.jit(jax.jacrev(ys)),
    "jit(vmap(grad))": lambda ys: jax.jit(jax.vmap(jax.grad(lambda k: jnp.sum(ys(k))))),
}
FORWARD_TRANSFORMS = {
    "jit(jacfwd)": lambda ys: jax.jit(jax.jacfwd(ys)),
    "jit(jvp)": lambda ys: jax.jit(lambda k: jax.jvp(ys, (k,), (1.0,))[1]),
    "jit(hessian)": lambda ys: jax.jit(jax.hessian(lambda k: jnp.sum(ys(k) ** 2))),
}


def _arg(transform, k):
    return jnp.array([k, k]) if "vmap" in transform else jnp.asarray(k)


# The suite runs one reverse-mode and one forward-mode transform per method; the
# full transform x method matrix is compile-bound (minutes), run it with
# `JAXSENS_FULL_TRUST_MATRIX=1 pytest tests/test_trust.py`.
FULL = bool(__import__("os").environ.get("JAXSENS_FULL_TRUST_MATRIX"))
if FULL:
    RAISE_CELLS = [(m, t) for m in CASES for t in TRANSFORMS] + [
        (m, t) for m in sorted(FORWARD_MODE) for t in FORWARD_TRANSFORMS]
    NAN_CELLS = RAISE_CELLS
else:
    RAISE_CELLS = [(m, "jit(grad(last entry))") for m in CASES] + [
        (m, "jit(jacfwd)") for m in sorted(FORWARD_MODE)]
    NAN_CELLS = [(m, "jit(grad(sum))") for m in CASES] + [
        ("Forward", "jit(jacrev)"), ("Discrete", "jit(jacrev)")]


@pytest.mark.parametrize("name,transform", RAISE_CELLS)
def test_failed_solve_raises_under_every_transform(name, transform):
    fns = {**TRANSFORMS, **FORWARD_TRANSFORMS}
    ys, k = make(name, throw=True, bad=True)
    with pytest.raises(RUNTIME_ERRORS):
        jax.block_until_ready(fns[transform](ys)(_arg(transform, k)))


@pytest.mark.parametrize("name,transform", NAN_CELLS)
def test_failed_solve_gives_nan_derivative_with_throw_false(name, transform):
    fns = {**TRANSFORMS, **FORWARD_TRANSFORMS}
    ys, k = make(name, throw=False, bad=True)
    out = fns[transform](ys)(_arg(transform, k))
    out = out[1] if transform.startswith("value_and_grad") else out
    assert bool(jnp.all(jnp.isnan(out))), out
    if FULL:
        ok_ys, _ = make(name, throw=False, bad=False)
        good = fns[transform](ok_ys)(_arg(transform, k))
        assert all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(good))


def test_vmap_one_bad_member_only_that_member_is_nan_and_can_be_masked():
    def solve(k, max_steps):
        return jaxsens.solve(decay, Y0, TS, k, sensitivity=jaxsens.InterpolatingAdjoint(),
                             max_steps=max_steps, throw=False)

    def loss(k):
        # Member 1 gets a NaN rate: its solve fails; member 0 is fine.
        return jnp.sum(solve(k, 4096).ys)

    ks = jnp.array([1.0, jnp.nan])
    grads = jax.jit(jax.vmap(jax.grad(loss)))(ks)
    assert bool(jnp.isfinite(grads[0])) and bool(jnp.isnan(grads[1]))
    ok = jax.jit(jax.vmap(
        lambda k: solve(k, 4096).result == jaxsens.RESULTS.successful))(ks)
    masked = jnp.sum(jnp.where(ok, grads, 0.0))
    exact = -jnp.sum(TS[:, None] * Y0 * jnp.exp(-TS[:, None]))
    assert float(masked) == pytest.approx(float(exact), rel=1e-5)


def test_vmap_with_throw_says_how_to_find_the_member():
    ys = jax.vmap(lambda k: jaxsens.solve(decay, Y0, TS, k, sensitivity=jaxsens.Discrete()).ys)
    with pytest.raises(RUNTIME_ERRORS, match="to find which, solve with `throw=False`"):
        ys(jnp.array([1.0, jnp.nan]))
