"""`jaxsens.explain`: which method `Auto` picks and why, and whether the gradient
can be trusted at the requested tolerances."""

import dataclasses
import time
from collections.abc import Callable

import diffrax as dfx
import equinox as eqx
import jax
import jax.numpy as jnp
import jax.tree_util as jtu
import numpy as np
from jax.flatten_util import ravel_pytree
from jaxtyping import ArrayLike, Float, PyTree, Scalar

from . import _xla
from ._sensitivity._options import DEFAULT_TOL, MAX_STEPS, SolverSettings
from ._sensitivity.auto import Auto, AutoDecision
from ._sensitivity.base import AbstractSensitivity, float_args_as_arrays
from ._sensitivity.discrete import Discrete
from ._sensitivity.krylov import KrylovExpm
from ._sensitivity.linear import LinearExpm
from ._solve import _check_sensitivity, solve


_PARTS = ("field", "y0", "args")


def sum_of_squares(ys: PyTree) -> Scalar:
    """The default loss of `explain`: `Σ ys²` over every leaf."""
    return sum(jnp.sum(y**2) for y in jtu.tree_leaves(ys))


@dataclasses.dataclass(frozen=True, repr=False)
class Explanation:
    """The result of [`jaxsens.explain`][]: print it for the report.

    **Attributes:**

    - `decision`: `Auto`'s `AutoDecision` (`method`, `rule`, `reasons`, `facts`,
        `estimates`; also available directly on this object).
    - `method`: the method whose gradient was probed (Auto's choice unless
        `sensitivity=` was given).
    - `rtol`, `atol`: the tolerances explained.
    - `probe`: `None` when skipped, else a dict: `error` (‖g − g_ref‖/‖g_ref‖ over
        all trainable leaves), `max_entry_error` (max |g − g_ref| / max |g_ref|),
        `parts` (`"field"`/`"y0"`/`"args"` → relative error of that part),
        `reference` (how `g_ref` was computed), `ref_rtol`, `ref_atol`, and the two
        gradients `gradient` and `reference_gradient`, each structured like the
        trainable part of `(field, y0, args)`.
    - `state_scale`: per-component size of the state, `max_t |y_i(t)|`: a dict with
        `smallest` (and its `component`) and `median`, over the components that
        are not identically zero.
    - `warnings`: sentences about a gradient that cannot be trusted.
    - `hints`: sentences about tolerances worth changing.
    - `timing`: `None`, or `{"first_call": s, "warm": s}` for the method's jitted
        gradient (`timing=True`).
    - `notes`: anything else worth knowing (e.g. why the probe was skipped).
    """

    decision: AutoDecision
    method: AbstractSensitivity
    rtol: float
    atol: float
    probe: dict | None
    state_scale: dict
    warnings: tuple[str, ...]
    hints: tuple[str, ...]
    timing: dict | None
    notes: tuple[str, ...]

    @property
    def rule(self) -> str:
        return self.decision.rule

    @property
    def reasons(self) -> tuple[str, ...]:
        return self.decision.reasons

    @property
    def facts(self) -> dict:
        return self.decision.facts

    @property
    def estimates(self) -> dict:
        return self.decision.estimates

    @property
    def trustworthy(self) -> bool | None:
        """`False` when the probe found a tolerance-dominated gradient, `None` when
        there was no probe."""
        if self.probe is None:
            return None
        return not self.warnings

    def __str__(self) -> str:
        f = self.facts
        lines = [
            f"jaxsens.explain: {f.get('solver', '?')}, n = {f.get('n')} states, "
            f"p = {f.get('p')} trainable scalars, {f.get('n_times')} save times, "
            f"rtol = {self.rtol:.0e}, atol = {self.atol:.0e}",
            f"Auto picks {self.decision.method!r}: {self.rule}",
        ]
        lines += [f"  - {r}" for r in self.reasons]
        if type(self.method) is not type(self.decision.method) or (
            self.method != self.decision.method
        ):
            lines.append(f"  (you asked about {self.method!r})")
        if self.estimates:
            lines.append("Estimated warm gradient cost, relative to Auto's pick:")
            chosen = type(self.decision.method).__name__
            for name, c in sorted(self.estimates.items(), key=lambda kv: kv[1]):
                mark = "  ← picked" if name == chosen else ""
                lines.append(f"    {name:<24}{c:6.2f}{mark}")
        else:
            lines.append("Estimated costs: none compared (a structural rule fired).")
        lines.append(f"Trust at rtol = {self.rtol:.0e}, atol = {self.atol:.0e}:")
        if self.probe is not None:
            p = self.probe
            parts = ", ".join(f"{k} {v:.1e}" for k, v in p["parts"].items())
            lines.append(
                f"  gradient vs {p['reference']} at rtol = {p['ref_rtol']:.0e}, "
                f"atol = {p['ref_atol']:.0e}: {p['error']:.1e} relative "
                f"({parts}); largest entry off by {p['max_entry_error']:.1e} of the "
                "largest entry."
            )
        if self.state_scale:
            s = self.state_scale
            lines.append(
                f"  state size max_t |y_i|: median {s['median']:.1e}, smallest "
                f"{s['smallest']:.1e} ({s['component']})."
            )
        lines += [f"  WARNING: {w}" for w in self.warnings]
        lines += [f"  hint: {h}" for h in self.hints]
        lines += [f"  note: {n}" for n in self.notes]
        if self.probe is not None and not self.warnings:
            lines.append("  OK: the gradient is not tolerance-dominated.")
        if self.timing is not None:
            lines.append(
                f"Measured {type(self.method).__name__} gradient: warm "
                f"{1e3 * self.timing['warm']:.2f} ms (median of "
                f"{self.timing['repeats']}), first call "
                f"{self.timing['first_call']:.2f} s (compilation included)."
            )
        return "\n".join(lines)

    def __repr__(self) -> str:
        err = None if self.probe is None else f"{self.probe['error']:.1e}"
        return (f"Explanation(method={self.method!r}, rule={self.rule!r}, "
                f"probe_error={err}, warnings={len(self.warnings)})")

    def show(self) -> None:
        """Print the report."""
        print(self)


def _to_float64(tree):
    def cast(x):
        if eqx.is_inexact_array(x):
            return x.astype(jnp.promote_types(x.dtype, jnp.float64))
        if isinstance(x, float):
            return jnp.asarray(x, jnp.float64)
        return x

    return jtu.tree_map(cast, tree)


def _state_scale(ys) -> dict:
    """Per component `max_t |y_i(t)|`, ignoring components that stay exactly 0."""
    best = None
    sizes = []
    for path, leaf in jtu.tree_flatten_with_path(ys)[0]:
        a = np.abs(np.asarray(leaf, dtype=np.float64)).reshape(leaf.shape[0], -1)
        comp = a.max(axis=0)
        for i, s in enumerate(comp):
            if s > 0 and np.isfinite(s):
                sizes.append(s)
                if best is None or s < best[0]:
                    index = np.unravel_index(i, leaf.shape[1:]) if leaf.ndim > 1 else ()
                    name = "y" + jtu.keystr(path) + "".join(f"[{j}]" for j in index)
                    best = (s, name)
    if not sizes:
        return {}
    return {"smallest": float(best[0]), "component": best[1],
            "median": float(np.median(sizes))}


def _split_parts(flat_tree) -> dict[str, np.ndarray]:
    out = {}
    for name, part in zip(_PARTS, flat_tree, strict=True):
        v, _ = ravel_pytree(part)
        if v.size:
            out[name] = np.asarray(v, np.float64)
    return out


def _solve(diff, static, ts, t0, method, settings: SolverSettings):
    f, y, a = eqx.combine(diff, static)
    return solve(f, y, ts, a, t0=t0, sensitivity=method, **settings.keywords())


# Module-level compiled functions: the loss, the method and every non-array
# setting are static (hashed), so explaining the same problem again reuses them.
@eqx.filter_jit
def _grad_and_ys(diff, static, ts, t0, loss, method, settings):
    def fn(d):
        ys = _solve(d, static, ts, t0, method, settings).ys
        out = loss(ys)
        if jnp.shape(out) != ():
            raise ValueError(
                f"`loss(ys)` must return a scalar, got shape {jnp.shape(out)}."
            )
        return out, ys

    return jax.grad(fn, has_aux=True)(diff)


@eqx.filter_jit
def _ys(diff, static, ts, t0, settings):
    return _solve(diff, static, ts, t0, Discrete(), settings).ys


def _rel(a, b) -> float:
    nb = float(np.linalg.norm(b))
    d = float(np.linalg.norm(a - b))
    return d if nb == 0 else d / nb


def explain(
    field: Callable,
    y0: PyTree[ArrayLike],
    ts: Float[ArrayLike, " times"],
    args: PyTree = None,
    *,
    t0: float | None = None,
    solver: dfx.AbstractSolver | None = None,
    rtol: float = DEFAULT_TOL,
    atol: float = DEFAULT_TOL,
    dt0: float | None = None,
    max_steps: int = MAX_STEPS,
    loss: Callable[[PyTree], Scalar] | None = None,
    probe: bool = True,
    probe_factor: float = 1000.0,
    warn_above: float = 1e-2,
    timing: bool = False,
    repeats: int = 5,
    sensitivity: AbstractSensitivity | None = None,
    auto: Auto | None = None,
) -> Explanation:
    """Say which sensitivity method `Auto` picks for a solve, why, what it
    estimated the alternatives would cost, and whether the gradient is accurate at
    the requested tolerances.

    The trust probe computes the gradient of `loss(sol.ys)` with respect to the
    field's inexact leaves, `y0` and `args` twice: with the method at your
    `rtol`/`atol`, and with `Discrete()` at tolerances `probe_factor` times tighter,
    in float64 when 64-bit floats are enabled. Their relative difference is the
    error your gradient carries because of the tolerances alone. Above
    `warn_above` the gradient is *tolerance-dominated* and a warning says so; a
    hint fires when `atol` is large next to the smallest state component (then
    `atol`, not `rtol`, sets the accuracy of that component).

    **Arguments:**

    - `field`, `y0`, `ts`, `args`, `t0`, `solver`, `rtol`, `atol`, `dt0`,
        `max_steps`: as for [`jaxsens.solve`][].
    - `loss`: `loss(ys) -> scalar`, the quantity whose gradient is probed
        (default: `Σ ys²`). Use your training loss for an honest probe.
    - `probe`: run the trust probe (two compiled gradients; set `False` for the
        choice alone).
    - `probe_factor`: how much tighter the reference tolerances are (default
        1000; the reference's tolerances never go below 1e-12, or 1e-7 in float32).
    - `warn_above`: the relative gradient error that counts as tolerance-dominated.
    - `timing`: also measure the method's jitted gradient: first call (with
        compilation) and the median warm time of `repeats` calls.
    - `sensitivity`: probe this method instead of Auto's pick (the choice is still
        reported).
    - `auto`: the `Auto()` instance whose rule is explained (default `Auto()`).

    **Returns:** an `Explanation`: `print` it, or read `method`, `rule`, `reasons`,
    `facts`, `estimates`, `probe["error"]`, `warnings`, `hints`, `timing`.

    **Example:**

    ```python
    import jax, jax.numpy as jnp, jaxsens
    jax.config.update("jax_enable_x64", True)

    field = lambda t, y, k: -k * y
    print(jaxsens.explain(field, jnp.array([1e-4, 2e-4]), jnp.linspace(0.0, 2.0, 5),
                          jnp.array([0.5, 1.5])))
    ```

    Run it once per new problem, before training: a gradient that is 20 % off
    (as with rtol = atol = 1e-6 on a model whose states are ~1e-4) trains slowly
    or not at all, and nothing else tells you. Tightening `atol` to about `rtol`
    times the state's size is usually the cheapest fix.
    """
    auto = Auto() if auto is None else auto
    if not isinstance(auto, Auto):
        raise TypeError(f"`auto` must be a `jaxsens.Auto()`, got {auto!r}.")
    if sensitivity is not None:
        _check_sensitivity(sensitivity)
    if not isinstance(probe_factor, (int, float)) or not probe_factor > 1:
        raise ValueError(f"`probe_factor` must be a number > 1, got {probe_factor!r}.")
    if not isinstance(repeats, int) or repeats < 1:
        raise ValueError(f"`repeats` must be a positive int, got {repeats!r}.")
    # Stricter than `solve`'s check: the probe computes with the tolerances, so
    # they must be Python numbers here (not `None`, not traced).
    for name, tol in (("rtol", rtol), ("atol", atol)):
        if not isinstance(tol, (int, float)) or not tol > 0:
            raise ValueError(f"`{name}` must be a positive number, got {tol!r}.")
    settings = SolverSettings(solver, rtol, atol, dt0, max_steps)
    loss = sum_of_squares if loss is None else loss
    if not callable(loss):
        raise TypeError(
            f"`loss` must be callable as `loss(ys) -> scalar`, got {loss!r}."
        )

    ts = jnp.asarray(ts)
    # As in `solve`, so the probe and its float64 reference differentiate the same
    # leaves.
    args = float_args_as_arrays(args)
    decision = auto.decide(field, y0, ts, args, solver=settings.solver)
    method = decision.method if sensitivity is None else sensitivity
    if isinstance(method, Auto):
        method = decision.method
    inputs = (field, y0, args)
    diff, static = eqx.partition(inputs, eqx.is_inexact_array)

    warnings: list[str] = []
    hints: list[str] = []
    notes: list[str] = []
    if jax.default_backend() == "cpu":
        notes.append(_xla.status())
    probe_out = None
    timing_out = None
    ys_for_scale = None

    exact = isinstance(method, (LinearExpm, KrylovExpm))
    user_grad = None
    if probe and exact:
        notes.append(
            f"{type(method).__name__} solves the linear system without time steps, so "
            "its gradient has no tolerance error: no probe needed. (Compare it with "
            "a time-stepped method with `jaxsens.check_gradient` if in doubt.)"
        )
    if (probe and not exact) or timing:
        def user_grad():
            return _grad_and_ys(diff, static, ts, t0, loss, method, settings)

        start = time.perf_counter()
        g_user, ys_user = jax.block_until_ready(user_grad())
        first_call = time.perf_counter() - start
        ys_for_scale = ys_user

    if probe and not exact:
        x64 = bool(jax.config.jax_enable_x64)
        floor = 1e-12 if x64 else 1e-7
        ref_rtol = max(rtol / probe_factor, floor)
        ref_atol = atol / probe_factor
        user_scale = _state_scale(ys_user)
        if user_scale:  # resolve even the smallest component to `ref_rtol`
            ref_atol = min(ref_atol, ref_rtol * user_scale["smallest"])
        ref_atol = max(ref_atol, floor)
        if x64:
            diff64, static64 = eqx.partition(_to_float64(inputs), eqx.is_inexact_array)
            ts64 = ts.astype(jnp.promote_types(ts.dtype, jnp.float64))
            where = "float64 "
        else:
            diff64, static64, ts64 = diff, static, ts
            where = ""
            notes.append(
                "64-bit floats are off, so the reference is computed in the state's "
                "own precision and cannot resolve errors below ~1e-5. Enable them "
                "with `jax.config.update(\"jax_enable_x64\", True)` for a sharper "
                "probe."
            )
        reference = dataclasses.replace(settings, rtol=ref_rtol, atol=ref_atol,
                                        max_steps=16 * settings.max_steps)
        g_ref, ys_ref = _grad_and_ys(diff64, static64, ts64, t0, loss, Discrete(),
                                     reference)
        ys_for_scale = ys_ref
        parts_user = _split_parts(g_user)
        parts_ref = _split_parts(g_ref)
        all_user = np.concatenate(list(parts_user.values()))
        all_ref = np.concatenate(list(parts_ref.values()))
        err = _rel(all_user, all_ref)
        big = float(np.max(np.abs(all_ref))) if all_ref.size else 0.0
        max_entry = float(np.max(np.abs(all_user - all_ref))) / big if big else 0.0
        probe_out = dict(
            error=err,
            max_entry_error=max_entry,
            parts={k: _rel(parts_user[k], parts_ref[k]) for k in parts_ref},
            reference=f"{where}Discrete()",
            gradient=g_user,
            reference_gradient=g_ref,
            ref_rtol=ref_rtol,
            ref_atol=ref_atol,
        )
        if not np.isfinite(err) or err > warn_above:
            warnings.append(
                f"the gradient is tolerance-dominated: at rtol = {rtol:.0e}, atol = "
                f"{atol:.0e} it is {100 * err:.3g} % off the reference (entries up to "
                f"{100 * max_entry:.3g} % of the largest). Tighten the tolerances "
                f"(the reference used rtol = {ref_rtol:.0e}, atol = {ref_atol:.0e}) "
                "and run `explain` again."
            )
        else:
            for part, e in probe_out["parts"].items():
                if not e <= warn_above:
                    warnings.append(
                        f"the gradient w.r.t. `{part}` is {100 * e:.3g} % off the "
                        f"reference (the whole gradient {100 * err:.2g} %, dominated "
                        "by larger entries elsewhere): if you train it, tighten the "
                        "tolerances."
                    )
    if ys_for_scale is None:
        # No gradient computed: one plain solve for the state's scale.
        ys_for_scale = _ys(diff, static, ts, t0, settings)
    scale = _state_scale(ys_for_scale)
    if scale:
        s = scale["smallest"]
        ratio = atol / s
        if atol > rtol * s and ratio > 1e-4:
            hints.append(
                f"atol = {atol:.0e} is {ratio:.0e} of the smallest state component's "
                f"size ({s:.1e}, {scale['component']}): there `atol`, not `rtol`, "
                f"sets the accuracy, about {100 * ratio:.2g} % per step. Use atol ≈ "
                f"rtol × {s:.0e} = {rtol * s:.0e}, or rescale the state to order 1."
            )

    if timing:
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            jax.block_until_ready(user_grad())
            times.append(time.perf_counter() - start)
        timing_out = dict(first_call=first_call, warm=float(np.median(times)),
                          repeats=repeats)

    return Explanation(
        decision=decision, method=method, rtol=float(rtol), atol=float(atol),
        probe=probe_out, state_scale=scale, warnings=tuple(warnings),
        hints=tuple(hints), timing=timing_out, notes=tuple(notes),
    )

