"""`jaxsens.explain`: the choice is Auto's, the probe's number is the true
tolerance error (checked against closed forms), and a tolerance-dominated
gradient is flagged. Three explanations, few compilations."""

import jax
import jax.numpy as jnp
import pytest

import jaxsens

from .helpers import PROBLEMS, Decay, rel_err


def closed_form_grad(field, y0, b, ts):
    """Exact gradient of `Σ ys²` for `y' = -k y + b` w.r.t. (field, y0, args)."""

    def loss(inputs):
        f, y, a = inputs
        k = f.rate
        ys = jax.vmap(lambda t: a / k + (y - a / k) * jnp.exp(-k * t))(ts)
        return jnp.sum(ys**2)

    return jax.grad(loss)((field, y0, b))


DECAY = PROBLEMS["decay"]


# Loose tolerances on small states over a long span: tolerance-dominated.
LOOSE = dict(field=Decay(jnp.array([0.7, 1.3])), y0=jnp.array([1e-2, 2e-2]),
             ts=jnp.linspace(0.0, 6.0, 5), args=jnp.array([0.0, 0.0]))


def test_accurate_gradient():
    # One explanation and all its assertions (a module fixture would be built on
    # both workers under `pytest -n 2`).
    e = jaxsens.explain(DECAY.field, DECAY.y0, DECAY.ts, DECAY.args, timing=True,
                        repeats=2)

    # The choice is Auto's.
    decision = jaxsens.Auto().decide(DECAY.field, DECAY.y0, DECAY.ts, DECAY.args)
    assert e.method == decision.method == jaxsens.Forward()
    assert e.rule == decision.rule and e.reasons == decision.reasons
    assert e.facts["n"] == 2 and e.facts["p"] == 4 and e.facts["n_times"] == 5
    assert set(e.estimates) >= {"Forward", "Discrete", "InterpolatingAdjoint"}
    text = str(e)
    assert "Auto picks Forward()" in text and decision.rule in text
    assert "← picked" in text
    # It says whether XLA:CPU compiles the solve's loops whole (on in this suite).
    assert "compiles this process's small loops whole" in text

    # The reference is right, and the reported error is the true error of the
    # gradient at the user's tolerances.
    p = e.probe
    truth = closed_form_grad(DECAY.field, DECAY.y0, DECAY.args, DECAY.ts)
    assert rel_err(p["reference_gradient"], truth) < 1e-7
    true_err = rel_err(p["gradient"], truth)
    assert abs(p["error"] - true_err) <= 1e-8 + 0.1 * true_err
    assert p["error"] < 1e-4
    assert set(p["parts"]) == {"field", "y0", "args"}
    assert p["ref_rtol"] == pytest.approx(1e-9) and p["ref_atol"] <= 1e-9
    assert e.trustworthy and not e.warnings and not e.hints
    assert "OK: the gradient is not tolerance-dominated" in text

    # Timing.
    t = e.timing
    assert t["repeats"] == 2 and 0 < t["warm"] <= t["first_call"]
    assert "Measured Forward gradient: warm" in text


def test_tolerance_dominated_is_flagged():
    e = jaxsens.explain(LOOSE["field"], LOOSE["y0"], LOOSE["ts"], LOOSE["args"],
                        rtol=1e-2, atol=1e-2, sensitivity=jaxsens.Discrete())
    p = e.probe
    truth = closed_form_grad(LOOSE["field"], LOOSE["y0"], LOOSE["args"], LOOSE["ts"])
    true_err = rel_err(p["gradient"], truth)
    assert true_err > 1e-2
    assert abs(p["error"] - true_err) <= 0.1 * true_err
    assert e.trustworthy is False
    assert any("tolerance-dominated" in w for w in e.warnings)
    # atol = 1e-2 is as large as the states (~1e-2): the hint names it.
    assert e.state_scale["smallest"] == pytest.approx(1e-2, rel=1e-6)
    assert any("atol = 1e-02" in h for h in e.hints)
    text = str(e)
    assert "WARNING" in text and "hint:" in text
    assert "you asked about Discrete()" in text
    assert e.method == jaxsens.Discrete()


def test_linear_field_needs_no_probe():
    field = jaxsens.LinearField(lambda a: a)
    A = jnp.array([[-1.0, 0.5], [0.2, -2.0]])
    e = jaxsens.explain(field, jnp.array([1.0, 2.0]), jnp.linspace(0.0, 1.0, 3), A)
    assert e.method == jaxsens.LinearExpm()
    assert e.probe is None and e.trustworthy is None
    assert any("no tolerance error" in n for n in e.notes)
    assert "Estimated costs: none compared" in str(e)


def test_python_float_args_are_probed_like_arrays():
    # `args=0.5` is trainable in `solve`; the probe and its float64 reference must
    # differentiate the same leaves (they once disagreed: 2 vs 3 entries).
    e = jaxsens.explain(lambda t, y, k: -k * y, jnp.array([1.0, 2.0]),
                        jnp.linspace(0.0, 2.0, 4), 0.5)
    assert set(e.probe["parts"]) == {"y0", "args"}
    assert e.probe["error"] < 1e-4


# --- errors --------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(rtol=0.0), ValueError, "`rtol` must be a positive"),
        (dict(atol=-1.0), ValueError, "`atol` must be a positive"),
        (dict(probe_factor=1.0), ValueError, "`probe_factor` must be a number > 1"),
        (dict(repeats=0), ValueError, "`repeats` must be a positive int"),
        (dict(sensitivity=jaxsens.Discrete), TypeError, "pass an instance"),
        (dict(sensitivity="discrete"), TypeError, "must be a jaxsens method"),
        (dict(auto=jaxsens.Discrete()), TypeError, "`auto` must be"),
        (dict(loss=3.0), TypeError, "`loss` must be callable"),
        (dict(loss=lambda ys: ys), ValueError, "must return a scalar"),
    ],
)
def test_errors(kwargs, error, match):
    with pytest.raises(error, match=match):
        jaxsens.explain(DECAY.field, DECAY.y0, DECAY.ts, DECAY.args, **kwargs)


def test_auto_counts_control_values_not_sample_times():
    # 4 samples: their times are a grid, their values may be trained. n + p =
    # 1 + 1 + 4 = 6 ≤ 8 → Forward; counting the times too (10) would give
    # Discrete.
    control = jaxsens.Control(jnp.linspace(0.0, 1.0, 4), jnp.zeros(4))

    def field(t, y, args):
        k, u = args
        return -k * y + u(t)

    decision = jaxsens.Auto().decide(field, jnp.ones(1), DECAY.ts,
                                     (jnp.ones(1), control))
    assert decision.facts["p"] == 5
    assert decision.method == jaxsens.Forward()
