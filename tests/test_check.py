"""`jaxsens.check_gradient`: right gradients pass, wrong ones are flagged.

Decay `y' = -k y` has the closed form `y_i(t) = y0_i e^{-k_i t}`, so every method,
the finite differences and the hand-written gradients are checked against the
truth, and the deliberately wrong gradients (a sign error, a factor 2) must fail.
Few compilations: two tests do the expensive checks (not module fixtures, which
`pytest -n 2` would build on both workers).
"""

import diffrax as dfx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxsens

from .helpers import rel_err


TS = jnp.linspace(0.0, 2.0, 5)


def decay_loss(params, sensitivity):
    sol = jaxsens.solve(lambda t, y, k: -k * y, params["y0"], TS, params["rate"],
                        rtol=1e-10, atol=1e-10, sensitivity=sensitivity)
    return jnp.sum(sol.ys**2)


def decay_grad(params):
    """Closed form of the gradient of `Σ_t Σ_i (y0_i e^{-k_i t})²`."""
    k, y0, t = params["rate"], params["y0"], TS[:, None]
    e = jnp.exp(-2 * k * t)
    return {"rate": jnp.sum(-2 * t * y0**2 * e, axis=0),
            "y0": jnp.sum(2 * y0 * e, axis=0)}


def sign_error(params):
    g = decay_grad(params)
    return {**g, "rate": g["rate"].at[0].multiply(-1.0)}


def factor_two(params):
    g = decay_grad(params)
    return {**g, "y0": g["y0"].at[1].multiply(2.0)}


PARAMS = {"rate": jnp.array([0.7, 1.3]), "y0": jnp.array([1.0, -0.5])}
METHODS = {"Discrete": jaxsens.Discrete(),
           "InterpolatingAdjoint": jaxsens.InterpolatingAdjoint()}


def test_wrong_gradients_are_flagged():
    # One check (one compilation per method) and all its assertions: a module
    # fixture would be built twice under `pytest -n 2`.
    check = jaxsens.check_gradient(
        decay_loss, PARAMS, methods=METHODS,
        extra={"closed form": decay_grad, "sign error": sign_error,
               "factor 2": factor_two},
    )
    # The table.
    assert check.labels == ("Discrete", "InterpolatingAdjoint", "closed form",
                            "sign error", "factor 2")
    assert check.fd_mode == "coordinates" and check.num_fd == check.num_params == 4
    for a in check.labels:
        assert (a, "FD") in check.errors
        assert all((a, b) in check.errors for b in check.labels if b != a)
    text = str(check)
    assert "Gradient check: 4 parameters" in text
    assert "FAILED" in text and "✗" in text

    # The right gradients agree with the truth, with FD and with each other.
    truth = decay_grad(PARAMS)
    right = ("Discrete", "InterpolatingAdjoint", "closed form")
    for name in right:
        assert rel_err(check.gradients[name], truth) < 1e-7, name
        assert check.error(name) < 1e-6, name  # against finite differences
        for other in right:
            assert other == name or check.error(name, other) < 1e-7, (name, other)

    # The wrong ones disagree with FD and with every other gradient, and are named.
    assert not check.ok
    for name in ("sign error", "factor 2"):
        for other in ("FD", *right):
            assert check.error(name, other) > 0.1, (name, other)
        assert any(a == name for a, _, _ in check.failures)
        assert f"`{name}` disagrees with everything else" in text
    row, col, err = check.worst
    assert {row, col} & {"sign error", "factor 2"}
    assert err == max(check.errors.values())


# --- many parameters: random directions ------------------------------------------

N = 40
RATES = jnp.linspace(0.2, 2.0, N)
Y0 = jnp.linspace(1.0, 2.0, N)


def wide_loss(rate, sensitivity):
    sol = jaxsens.solve(lambda t, y, k: -k * y, Y0, TS, rate, rtol=1e-10,
                        atol=1e-10, sensitivity=sensitivity)
    return jnp.sum(sol.ys**2)


def wide_grad(rate):
    t = TS[:, None]
    return jnp.sum(-2 * t * Y0**2 * jnp.exp(-2 * rate * t), axis=0)


BIG = int(jnp.argmax(jnp.abs(wide_grad(RATES))))


def test_random_directions():
    good = jaxsens.check_gradient(
        wide_loss, RATES, methods=[jaxsens.Discrete()],
        extra={"closed form": wide_grad}, fd_directions=8,
    )
    assert good.fd_mode == "directions" and good.num_fd == 8
    assert good.ok, str(good)
    assert good.error("Discrete") < 1e-5
    assert good.error("closed form", "Discrete") < 1e-7
    assert rel_err(good.gradients["Discrete"], wide_grad(RATES)) < 1e-7
    assert "OK" in str(good)

    # The same loss again (the compiled finite differences are reused), with
    # wrong gradients: 2 sign flips of 40 entries, and the largest entry doubled.
    bad = jaxsens.check_gradient(
        wide_loss, RATES, methods=(), fd_directions=8, key=1,
        extra={"two signs": lambda k: wide_grad(k) * jnp.where(
            jnp.arange(N) % 20 == 3, -1.0, 1.0),
            "one doubled": lambda k: wide_grad(k).at[BIG].multiply(2.0)},
    )
    assert not bad.ok
    # The relative error along random directions estimates the true one.
    truth = wide_grad(RATES)
    for name in ("two signs", "one doubled"):
        true_err = rel_err(bad.gradients[name], truth)
        assert true_err > 0.1
        assert bad.error(name) > 0.05
        assert 1 / 3 < bad.error(name) / true_err < 3


# --- errors --------------------------------------------------------------------


def test_error_x64_off():
    jax.config.update("jax_enable_x64", False)
    try:
        with pytest.raises(ValueError, match="jax_enable_x64"):
            jaxsens.check_gradient(decay_loss, {"k": np.ones(2, np.float32)})
    finally:
        jax.config.update("jax_enable_x64", True)


def test_error_float32_params():
    with pytest.raises(ValueError, match="needs float64 parameters, got float32"):
        jaxsens.check_gradient(decay_loss, jnp.ones(2, jnp.float32))


def test_error_non_scalar_loss():
    loss = lambda p, s: jaxsens.solve(lambda t, y, k: -k * y, p["y0"], TS,
                                      p["rate"], sensitivity=s).ys
    with pytest.raises(ValueError, match="must return a scalar, got shape"):
        jaxsens.check_gradient(loss, PARAMS, methods=[jaxsens.Discrete()])


def test_error_float32_loss():
    with pytest.raises(ValueError, match="finite differences need float64"):
        jaxsens.check_gradient(lambda p, s: jnp.sum(p).astype(jnp.float32),
                               jnp.ones(2), methods=[jaxsens.Discrete()])


def test_error_one_argument_loss():
    with pytest.raises(TypeError, match="with two arguments"):
        jaxsens.check_gradient(lambda p: jnp.sum(p**2), jnp.ones(2))


def test_error_no_float_params():
    with pytest.raises(ValueError, match="no floating-point array leaves"):
        jaxsens.check_gradient(decay_loss, {"n": 3})


@pytest.mark.parametrize(
    "methods, match",
    [([jaxsens.Discrete], "pass an instance"),
     ([dfx.RecursiveCheckpointAdjoint()], "extra=")],
)
def test_error_bad_methods(methods, match):
    with pytest.raises(TypeError, match=match):
        jaxsens.check_gradient(decay_loss, PARAMS, methods=methods)


def test_error_bad_extra():
    with pytest.raises(ValueError, match="structured like"):
        jaxsens.check_gradient(decay_loss, PARAMS, methods=(),
                               extra={"flat": lambda p: jnp.zeros(4)})
    with pytest.raises(ValueError, match="shapes"):
        jaxsens.check_gradient(
            decay_loss, PARAMS, methods=(),
            extra={"short": lambda p: {"rate": jnp.zeros(1), "y0": jnp.zeros(2)}},
        )
    with pytest.raises(ValueError, match="already used"):
        jaxsens.check_gradient(decay_loss, PARAMS, methods=METHODS,
                               extra={"Discrete": decay_grad})


@pytest.mark.parametrize(
    "kwargs, match",
    [(dict(tol=0.0), "`tol` must be a positive"),
     (dict(eps=2.0), "`eps` must be a number"),
     (dict(fd_directions=0), "`fd_directions` must be"),
     (dict(methods=()), "Nothing to check")],
)
def test_error_bad_settings(kwargs, match):
    with pytest.raises(ValueError, match=match):
        jaxsens.check_gradient(decay_loss, PARAMS, **kwargs)


def test_error_loss_not_callable():
    with pytest.raises(TypeError, match="must be callable"):
        jaxsens.check_gradient(3.0, PARAMS)
