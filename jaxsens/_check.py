"""`jaxsens.check_gradient`: one loss, its gradient under several methods, and
central finite differences in float64, compared in one table."""

import dataclasses
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
import jax.tree_util as jtu
import numpy as np
from jax.flatten_util import ravel_pytree
from jaxtyping import PyTree, Scalar

from ._sensitivity.base import AbstractSensitivity
from ._sensitivity.discrete import Discrete
from ._sensitivity.forward import Forward
from ._sensitivity.gauss import GaussAdjoint
from ._sensitivity.interpolating import InterpolatingAdjoint


FD = "FD"
_X64_FIX = (
    "Enable 64-bit floats before any array is created: "
    '`jax.config.update("jax_enable_x64", True)` at the top of the script, or '
    "`JAX_ENABLE_X64=1` in the environment."
)


@dataclasses.dataclass(frozen=True, repr=False)
class GradientCheck:
    """The result of [`jaxsens.check_gradient`][]: print it for the table.

    **Attributes:**

    - `labels`: the gradients compared, in order (sensitivity methods, then the
        `extra` gradient functions).
    - `errors`: `(row, col) → ‖g_row − g_col‖ / ‖g_col‖` for every ordered pair of
        labels, and `(row, "FD") →` the relative difference to central finite
        differences (over coordinates or random directions, see `fd_mode`).
    - `gradients`: label → gradient (structured like `params`).
    - `fd_mode`: `"coordinates"` (every parameter perturbed in turn) or
        `"directions"` (random Gaussian directions `v`, comparing `g·v` with the
        directional difference quotient).
    - `num_fd`: number of finite-difference directions (each costs two losses).
    - `num_params`: number of float scalars in `params`.
    - `eps`: the relative finite-difference step.
    - `tol`: the relative difference above which an entry fails.
    - `seconds`: label → wall time of its gradient (`"FD"`: of all the finite-
        difference losses), compilation included unless an earlier check of the
        same loss already compiled it.
    """

    labels: tuple[str, ...]
    errors: dict[tuple[str, str], float]
    gradients: dict[str, Any]
    fd_mode: str | None
    num_fd: int
    num_params: int
    eps: float
    tol: float
    seconds: dict[str, float]

    @property
    def failures(self) -> tuple[tuple[str, str, float], ...]:
        """Every `(row, col, error)` above `tol`, worst first."""
        bad = [(a, b, e) for (a, b), e in self.errors.items() if not e <= self.tol]
        return tuple(sorted(bad, key=lambda x: -np.nan_to_num(x[2], nan=np.inf)))

    @property
    def ok(self) -> bool:
        """True when every compared pair agrees to within `tol`."""
        return not self.failures

    @property
    def worst(self) -> tuple[str, str, float]:
        """`(row, col, error)` of the largest relative difference in the table."""
        if not self.errors:
            return ("", "", 0.0)
        # Ties (‖a − b‖/‖b‖ and ‖b − a‖/‖a‖ are often equal) go to the row that
        # fails most often: the suspect.
        n_bad = {
            a: sum(not e <= self.tol for (r, _), e in self.errors.items() if r == a)
            for a in self.labels
        }

        def rank(k):
            e = float(np.nan_to_num(self.errors[k], nan=np.inf))
            return (float(f"{e:.2e}"), n_bad[k[0]])

        key = max(self.errors, key=rank)
        return (*key, self.errors[key])

    def error(self, a: str, b: str = FD) -> float:
        """`‖g_a − g_b‖ / ‖g_b‖` (`b` defaults to finite differences)."""
        return self.errors[(a, b)]

    def __str__(self) -> str:
        cols = ([FD] if self.fd_mode else []) + list(self.labels)
        w0 = max([len(s) for s in self.labels] + [8]) + 2
        widths = [max(len(c), 9) + 2 for c in cols]
        if self.fd_mode == "coordinates":
            fd = f"central differences over all {self.num_fd} coordinates"
        elif self.fd_mode == "directions":
            fd = (f"central differences along {self.num_fd} random directions "
                  "(g·v vs the difference quotient)")
        else:
            fd = "no finite differences"
        lines = [
            f"Gradient check: {self.num_params} parameters; {fd}, "
            f"eps = {self.eps:.0e}.",
            "Relative difference ‖g_row − g_col‖/‖g_col‖ "
            f"(✗: above tol = {self.tol:.0e}).",
            " " * w0 + "".join(c.rjust(w) for c, w in zip(cols, widths, strict=True))
            + "   time (s)",
        ]
        for a in self.labels:
            cells = []
            for b, w in zip(cols, widths, strict=True):
                if a == b:
                    cells.append("—".rjust(w))
                    continue
                e = self.errors[(a, b)]
                mark = " " if e <= self.tol else "✗"
                cells.append(f"{e:.1e}{mark}".rjust(w))
            secs = self.seconds.get(a)
            t = f"{secs:10.2f}" if secs is not None else ""
            lines.append(a.ljust(w0) + "".join(cells) + t)
        if self.ok:
            a, b, e = self.worst
            lines.append(f"OK: all agree to within {self.tol:.0e} (worst {e:.1e}, "
                         f"{a} vs {b}).")
        else:
            a, b, e = self.worst
            lines.append(f"FAILED: worst {e:.1e} ({a} vs {b}).")
            lines += self._diagnosis()
        return "\n".join(lines)

    def _diagnosis(self) -> list[str]:
        bad_rows = {a for a, b, _ in self.failures}
        notes = []
        if self.fd_mode and all(b == FD for _, b, _ in self.failures) and len(
            self.labels
        ) > 1:
            notes.append(
                "  Every gradient agrees with every other but not with FD: the finite "
                "differences are probably noisy. Solve with tighter tolerances inside "
                "`loss` (rtol = atol = 1e-10) or change `eps`."
            )
            return notes
        # A row that disagrees with the majority is the suspect.
        for a in self.labels:
            others = [b for b in ([FD] if self.fd_mode else []) + list(self.labels)
                      if b != a]
            n_bad = sum(not self.errors[(a, b)] <= self.tol for b in others)
            if others and n_bad == len(others) and len(others) > 1:
                notes.append(f"  `{a}` disagrees with everything else: it is the "
                             "suspect.")
        if not notes and bad_rows:
            notes.append(
                "  Methods disagree with each other: the gradient may be "
                "tolerance-dominated. Try tighter rtol/atol (see `jaxsens.explain`)."
            )
        return notes

    def __repr__(self) -> str:
        status = "ok" if self.ok else "FAILED"
        a, b, e = self.worst
        return (f"GradientCheck({status}, worst={e:.1e} ({a} vs {b}), "
                f"labels={self.labels})")

    def show(self) -> None:
        """Print the table."""
        print(self)


def _label(method) -> str:
    return type(method).__name__


def _default_methods(num_params: int) -> dict[str, AbstractSensitivity]:
    methods = {"Discrete": Discrete()}
    if num_params <= 100:
        methods["Forward"] = Forward()
    methods["InterpolatingAdjoint"] = InterpolatingAdjoint()
    methods["GaussAdjoint"] = GaussAdjoint()
    return methods


def _as_method_dict(methods) -> dict[str, AbstractSensitivity]:
    if isinstance(methods, AbstractSensitivity):
        methods = [methods]
    if isinstance(methods, Mapping):
        items = list(methods.items())
    else:
        items = [(_label(m), m) for m in methods]
        names = [n for n, _ in items]
        if len(set(names)) != len(names):  # e.g. two InterpolatingAdjoint settings
            items = [(repr(m) if names.count(n) > 1 else n, m) for n, m in items]
    out = {}
    for name, m in items:
        if isinstance(m, type) and issubclass(m, AbstractSensitivity):
            raise TypeError(
                f"`methods` holds the class `{m.__name__}`: pass an instance, "
                f"`jaxsens.{m.__name__}()`."
            )
        if not isinstance(m, AbstractSensitivity):
            raise TypeError(
                "`methods` must hold jaxsens sensitivity methods such as "
                f"`jaxsens.Discrete()`; got {m!r}. To check a gradient you computed "
                "yourself, pass it as `extra={'name': grad_fn}`."
            )
        out[str(name)] = m
    return out


# Module-level compiled functions: `loss`, `method` and the non-array part of
# `params` are static (hashed), so checking the same loss again — after fixing a
# gradient, or with other `extra` functions — reuses the compiled code.
@eqx.filter_jit
def _method_grad(diff, static, loss, method):
    return jax.grad(lambda d: loss(eqx.combine(d, static), method))(diff)


@eqx.filter_jit
def _loss_values(points, diff, static, loss, method):
    # `lax.map` runs the evaluations in turn, each exactly as an unbatched call
    # would (no adaptive steps shared across a batch), with one compilation.
    _, unravel = ravel_pytree(diff)
    return jax.lax.map(lambda x: loss(eqx.combine(unravel(x), static), method), points)


def _rel(a: np.ndarray, b: np.ndarray) -> float:
    nb = float(np.linalg.norm(b))
    diff = float(np.linalg.norm(a - b))
    if nb == 0.0:
        return diff  # absolute when the reference is exactly zero
    return diff / nb


def check_gradient(
    loss: Callable[[PyTree, AbstractSensitivity], Scalar],
    params: PyTree,
    *,
    methods: Sequence[AbstractSensitivity]
    | Mapping[str, AbstractSensitivity]
    | AbstractSensitivity
    | None = None,
    extra: Mapping[str, Callable[[PyTree], PyTree]] | None = None,
    fd: bool = True,
    eps: float | None = None,
    fd_directions: int | None = None,
    max_coordinates: int = 32,
    tol: float = 1e-3,
    key: int | jax.Array = 0,
) -> GradientCheck:
    """Compute the gradient of `loss` under several sensitivity methods, your own
    gradient functions and central finite differences (float64), and compare them
    all in one table.

    **Arguments:**

    - `loss`: `loss(params, sensitivity) -> scalar`. Route `sensitivity` into your
        solve: `jaxsens.solve(..., sensitivity=sensitivity)`. Solve with tight
        tolerances (e.g. `rtol = atol = 1e-10`) so finite differences are accurate.
    - `params`: what to differentiate: any PyTree (an `eqx.Module`, a dict of
        arrays, ...). Its float64 leaves are the parameters; other leaves (ints,
        functions) are held fixed.
    - `methods`: the sensitivity methods to compare, a sequence or a
        `{label: method}` dict. Default: `Discrete()`, `Forward()` (when `params`
        has at most 100 scalars), `InterpolatingAdjoint()` and `GaussAdjoint()`.
    - `extra`: `{label: grad_fn}`, gradients you computed some other way (a
        hand-written adjoint, an `expm` rewrite, `jax.grad` of another loss);
        `grad_fn(params)` returns a gradient structured like `params`.
    - `fd`: include central finite differences (default `True`; needs float64).
    - `eps`: relative finite-difference step (default `1e-5`): coordinate `i` is
        perturbed by `eps·max(1, |p_i|)`, a random direction `v ~ N(0, I)` by
        `eps·max(1, rms(p))`.
    - `fd_directions`: number of random directions; default: none when `params`
        has at most `max_coordinates` scalars (every coordinate is perturbed),
        else 16. The relative error along Gaussian directions estimates the full
        relative error (its expectation is the same), so a sign error on 1 % of
        10^4 entries is still caught with 2·16 loss evaluations.
    - `max_coordinates`: see `fd_directions`.
    - `tol`: an entry fails when its relative difference is above this.
    - `key`: seed (an int or a `jax.random` key) for the random directions.

    **Returns:** a `GradientCheck`: `ok`, `worst`, `errors`, `gradients`, and a
    readable table (`print(check)` or `check.show()`).

    **Example:**

    ```python
    import jax, jax.numpy as jnp, jaxsens
    jax.config.update("jax_enable_x64", True)

    ts = jnp.linspace(0.0, 2.0, 5)

    def loss(k, sensitivity):
        sol = jaxsens.solve(lambda t, y, k: -k * y, jnp.array([1.0, 2.0]), ts, k,
                            rtol=1e-10, atol=1e-10, sensitivity=sensitivity)
        return jnp.sum(sol.ys**2)

    def my_grad(k):  # closed form of d/dk Σ_t Σ_i (y0_i e^{-k_i t})²
        t = ts[:, None]
        return jnp.sum(-2 * t * jnp.array([1.0, 4.0]) * jnp.exp(-2 * k * t), axis=0)

    check = jaxsens.check_gradient(loss, jnp.array([0.5, 1.5]),
                                   methods=[jaxsens.Discrete(), jaxsens.Forward()],
                                   extra={"closed form": my_grad})
    print(check)
    assert check.ok
    ```

    Run it whenever a gradient is written by hand or a method is chosen for a new
    problem: a hand-written gradient (say, of an `expm` solution) is easily wrong
    at first, and a table against `Discrete()` and finite differences shows that
    at once. When only the finite-difference column fails, suspect the
    differences (tolerances too loose inside `loss`), not the gradients.
    """
    if not callable(loss):
        raise TypeError(
            f"`loss` must be callable as `loss(params, sensitivity)`, got {loss!r}."
        )
    if not isinstance(tol, (int, float)) or not tol > 0:
        raise ValueError(f"`tol` must be a positive number, got {tol!r}.")
    if eps is None:
        eps = 1e-5
    if not isinstance(eps, (int, float)) or not 0 < eps < 1:
        raise ValueError(f"`eps` must be a number in (0, 1), got {eps!r}.")
    if fd_directions is not None and (
        not isinstance(fd_directions, int) or fd_directions < 1
    ):
        raise ValueError(
            f"`fd_directions` must be a positive int or None, got {fd_directions!r}."
        )

    diff, static = eqx.partition(params, eqx.is_inexact_array)
    leaves = jtu.tree_leaves(diff)
    if not leaves:
        raise ValueError(
            "`params` has no floating-point array leaves to differentiate; pass e.g. "
            "`jnp.array([0.5, 1.5])` or an `eqx.Module` with float weights (Python "
            "floats are not arrays: wrap them in `jnp.asarray`)."
        )
    if not jax.config.jax_enable_x64:
        raise ValueError(
            "`check_gradient` needs float64 (finite differences in float32 are off "
            f"by ~1e-3 at best). {_X64_FIX}"
        )
    bad = sorted({str(x.dtype) for x in leaves if x.dtype != jnp.float64})
    if bad:
        raise ValueError(
            f"`check_gradient` needs float64 parameters, got {', '.join(bad)} "
            "leaves. Convert them: `params = jax.tree_util.tree_map(lambda x: "
            "x.astype(jnp.float64) if eqx.is_inexact_array(x) else x, params)` (and "
            "build `y0`, `ts` and the field in float64 too)."
        )
    flat0, unravel = ravel_pytree(diff)
    num_params = int(flat0.size)

    if methods is None:
        methods = _default_methods(num_params)
    else:
        methods = _as_method_dict(methods)
    extra = {} if extra is None else dict(extra)
    for name in extra:
        if name in methods or name == FD:
            raise ValueError(f"`extra` label {name!r} is already used; rename it.")
    if not methods and not extra:
        raise ValueError("Nothing to check: pass `methods=` and/or `extra=`.")

    def flat_loss(x, method):
        return loss(eqx.combine(unravel(x), static), method)

    # Trace-time checks on the loss's output, with the first method (or Discrete).
    probe_method = next(iter(methods.values()), Discrete())
    try:
        out = jax.eval_shape(lambda x: flat_loss(x, probe_method), flat0)
    except TypeError as e:
        raise TypeError(
            f"Calling `loss(params, sensitivity)` failed: {e}. `check_gradient` "
            "calls your loss with two arguments; route the second into "
            "`jaxsens.solve(..., sensitivity=sensitivity)`."
        ) from e
    if not isinstance(out, jax.ShapeDtypeStruct) or out.shape != ():
        shape = getattr(out, "shape", type(out).__name__)
        raise ValueError(
            f"`loss` must return a scalar, got shape {shape}. Reduce it, e.g. "
            "`jnp.sum(...)` or `jnp.mean(...)`."
        )
    if fd and out.dtype != jnp.float64:
        raise ValueError(
            f"`loss` returned {out.dtype}, but finite differences need float64: build "
            "`y0`, `ts` and the field's arrays in float64 (or pass `fd=False`)."
        )

    # User gradients first: they are cheap, and a wrong structure fails fast.
    extra_grads: dict[str, np.ndarray] = {}
    seconds: dict[str, float] = {}
    for name, fn in extra.items():
        start = time.perf_counter()
        g = jax.block_until_ready(fn(params))
        seconds[name] = time.perf_counter() - start
        g_diff = eqx.filter(g, eqx.is_inexact_array)
        if jtu.tree_structure(g_diff) != jtu.tree_structure(diff):
            raise ValueError(
                f"`extra[{name!r}](params)` must return a gradient structured like "
                f"the float leaves of `params` ({jtu.tree_structure(diff)}), got "
                f"{jtu.tree_structure(g_diff)}."
            )
        shapes = [jnp.shape(x) for x in jtu.tree_leaves(g_diff)]
        want = [jnp.shape(x) for x in leaves]
        if shapes != want:
            raise ValueError(
                f"`extra[{name!r}](params)` returned leaves of shapes {shapes}; the "
                f"parameters have shapes {want}."
            )
        extra_grads[name] = np.asarray(ravel_pytree(g_diff)[0], dtype=np.float64)

    gradients: dict[str, np.ndarray] = {}
    for name, method in methods.items():
        start = time.perf_counter()
        g = jax.block_until_ready(_method_grad(diff, static, loss, method))
        gradients[name] = np.asarray(ravel_pytree(g)[0], dtype=np.float64)
        seconds[name] = time.perf_counter() - start
    gradients.update(extra_grads)

    labels = tuple(gradients)
    errors: dict[tuple[str, str], float] = {}
    for a in labels:
        for b in labels:
            if a != b:
                errors[(a, b)] = _rel(gradients[a], gradients[b])

    fd_mode, num_fd = None, 0
    if fd:
        if fd_directions is None and num_params <= max_coordinates:
            fd_mode, num_fd = "coordinates", num_params
            x = np.asarray(flat0)
            steps = eps * np.maximum(1.0, np.abs(x))
            dirs = np.eye(num_params)
        else:
            fd_mode = "directions"
            num_fd = 16 if fd_directions is None else fd_directions
            k = jr.key(key) if isinstance(key, int) else key
            dirs = np.asarray(jr.normal(k, (num_fd, num_params), jnp.float64))
            rms = float(np.sqrt(np.mean(np.asarray(flat0) ** 2)))
            steps = np.full(num_fd, eps * max(1.0, rms))
        points = np.concatenate(
            [flat0 + steps[:, None] * dirs, flat0 - steps[:, None] * dirs]
        )
        start = time.perf_counter()
        values = np.asarray(
            _loss_values(jnp.asarray(points), diff, static, loss, probe_method)
        )
        seconds[FD] = time.perf_counter() - start
        quotients = (values[:num_fd] - values[num_fd:]) / (2 * steps)
        if not np.all(np.isfinite(values)):
            raise ValueError(
                "`loss` returned NaN or inf at a finite-difference point: reduce "
                f"`eps` (now {eps:g}) or check the loss near `params`."
            )
        for a in labels:
            errors[(a, FD)] = _rel(dirs @ gradients[a], quotients)

    grads_tree = {name: eqx.combine(unravel(jnp.asarray(g)), static)
                  for name, g in gradients.items()}
    return GradientCheck(
        labels=labels, errors=errors, gradients=grads_tree, fd_mode=fd_mode,
        num_fd=num_fd, num_params=num_params, eps=float(eps), tol=float(tol),
        seconds=seconds,
    )
