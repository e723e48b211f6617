"""Multiple shooting: fit an ODE model on segments solved in parallel.

Shooting from `t0` over a long, oscillatory record makes the loss a rugged function
of the parameters: a small change of frequency shifts the phase of late
oscillations by whole periods, and gradient descent stops in one of the many
local minima (or meets huge gradients). Multiple shooting cuts `[t0, T]` into
segments, gives each segment its own trainable start state (initialised from the
data), solves all segments at once (`jax.vmap`), and ties neighbouring segments
together with a continuity penalty. Each segment is short, so the loss is nearly
convex in the parameters; as training proceeds the penalty stitches the segments
into one trajectory.

Cites: Bock & Plitt 1984 (multiple shooting for parameter estimation); van
Domselaar & Hemker 1975; Turan & Jäschke 2021 (multiple shooting for neural ODEs).
"""

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Float, PyTree

from ._sensitivity._options import DEFAULT_TOL, MAX_STEPS
from ._sensitivity.auto import Auto
from ._sensitivity.base import AbstractSensitivity
from ._solve import solve


class ShootingModel(eqx.Module):
    """What multiple shooting trains: a field, its `args`, and one start state per
    segment.

    Every inexact array inside (the field's weights, `args`, `starts`) is
    trainable: pass the whole model to `eqx.filter_grad` / optax. Build it with
    [`jaxsens.shooting.init_model`][], which initialises `starts` from the data.

    **Attributes:**

    - `field`: `field(t, y, args) -> dy/dt`, a function or an `eqx.Module`.
    - `starts`: the state at the start of each segment, shape
        `(n_segments, *state_shape)`.
    - `args`: passed to `field` (e.g. mechanistic parameters).

    **Example:**

    ```python
    import equinox as eqx, jax.numpy as jnp, jaxsens
    model = jaxsens.shooting.ShootingModel(lambda t, y, k: -k * y,
                                           starts=jnp.ones((3, 2)), args=jnp.array(0.5))
    eqx.filter(model, eqx.is_inexact_array).starts.shape    # trainable: (3, 2)
    ```
    """

    field: object
    starts: Float[Array, "segments ..."]
    args: PyTree = None


def segment_bounds(n_times: int, n_segments: int) -> np.ndarray:
    """Indices into `ts` where the segments start and end (`n_segments + 1` of
    them, first `0`, last `n_times - 1`), as evenly spaced as the grid allows.
    Neighbouring segments share their boundary sample.

    **Example:**

    ```python
    import jaxsens
    jaxsens.shooting.segment_bounds(11, 3)   # array([ 0,  3,  7, 10])
    ```
    """
    _check_segments(n_times, n_segments)
    return np.round(np.linspace(0, n_times - 1, n_segments + 1)).astype(int)


def init_model(
    field,
    ts: Float[ArrayLike, " times"],
    data: Float[ArrayLike, "times ..."],
    n_segments: int,
    args: PyTree = None,
) -> ShootingModel:
    """A [`jaxsens.shooting.ShootingModel`][] whose segment start states are the
    data at the segment boundaries.

    **Arguments:**

    - `field`, `args`: the model, as for [`jaxsens.solve`][].
    - `ts`, `data`: the observation times `(T,)` and observed states `(T, ...)`.
    - `n_segments`: how many segments to cut `ts` into (`1` is single shooting
        from a trainable initial state).

    **Returns:** the `ShootingModel`.

    **Example:**

    ```python
    import jax.numpy as jnp, jaxsens
    ts = jnp.linspace(0.0, 4.0, 9)
    data = jnp.stack([jnp.exp(-ts), jnp.exp(-2 * ts)], axis=1)
    model = jaxsens.shooting.init_model(lambda t, y, k: -k * y, ts, data, 4,
                                        args=jnp.array([1.0, 2.0]))
    model.starts.shape   # (4, 2)
    ```
    """
    ts, data = _check_data(ts, data)
    bounds = segment_bounds(ts.shape[0], n_segments)
    return ShootingModel(field=field, starts=data[bounds[:-1]], args=args)


class _Segments:
    """Static (NumPy) bookkeeping: which sample of which segment is which datum.

    `index` `(S, L+1)` indexes `ts` (may overrun its end), `lengths` `(S,)` counts
    the intervals per segment, `data_mask` `(S, L+1)` marks the samples counted in
    the data term.
    """

    def __init__(self, index, lengths, data_mask):
        self.index = index
        self.lengths = lengths
        self.data_mask = data_mask

    @classmethod
    def make(cls, n_times, n_segments):
        bounds = segment_bounds(n_times, n_segments)
        lengths = np.diff(bounds)
        width = int(lengths.max())
        index = bounds[:-1, None] + np.arange(width + 1)[None, :]
        # Each data point is counted once: a segment owns its samples up to (not
        # including) its end, the last segment owns the final sample too.
        data_mask = np.arange(width + 1)[None, :] < lengths[:, None]
        data_mask[-1, lengths[-1]] = True
        return cls(index, lengths, data_mask)

    def times(self, ts):
        n = ts.shape[0]
        step = ts[-1] - ts[-2]
        over = np.maximum(self.index - (n - 1), 0)
        # Samples past the last observation only pad segments to a common length
        # for vmap; they are masked out of the loss.
        return ts[np.minimum(self.index, n - 1)] + over * step


def predict_segments(
    model: ShootingModel,
    ts: Float[ArrayLike, " times"],
    n_segments: int,
    *,
    sensitivity: AbstractSensitivity = Auto(),  # noqa: B008 (immutable Module)
    solver=None,
    rtol: float = DEFAULT_TOL,
    atol: float = DEFAULT_TOL,
    dt0: float | None = None,
    max_steps: int = MAX_STEPS,
) -> tuple[Float[Array, "segments samples"], Float[Array, "segments samples ..."],
           np.ndarray]:
    """Solve every segment from its start state (all at once, `jax.vmap`).

    **Arguments:** as [`jaxsens.shooting.multiple_shooting_loss`][].

    **Returns:** `(times, ys, valid)`: segment `k`'s save times `times[k]`, states
    `ys[k]`, and a boolean mask `valid[k]` of the samples inside the segment
    (segments are padded to a common length).

    **Example:**

    ```python
    import jax.numpy as jnp, jaxsens
    ts = jnp.linspace(0.0, 4.0, 9)
    data = jnp.exp(-ts)[:, None]
    model = jaxsens.shooting.init_model(lambda t, y, k: -k * y, ts, data, 2, args=1.0)
    times, ys, valid = jaxsens.shooting.predict_segments(model, ts, 2)
    ys.shape   # (2, 5, 1)
    ```
    """
    ts = jnp.asarray(ts)
    if ts.ndim != 1:
        raise ValueError(f"`ts` must be 1-D, got shape {ts.shape}.")
    segments = _Segments.make(ts.shape[0], n_segments)
    _check_starts(model, n_segments, None)
    times = segments.times(ts)

    def one(start, seg_ts):
        return solve(model.field, start, seg_ts, model.args, solver=solver, rtol=rtol,
                     atol=atol, dt0=dt0, max_steps=max_steps,
                     sensitivity=sensitivity).ys

    ys = jax.vmap(one)(model.starts, times)
    valid = np.arange(times.shape[1])[None, :] <= segments.lengths[:, None]
    return times, ys, valid


def multiple_shooting_loss(
    model: ShootingModel,
    ts: Float[ArrayLike, " times"],
    data: Float[ArrayLike, "times ..."],
    n_segments: int,
    continuity_weight: float = 1.0,
    *,
    sensitivity: AbstractSensitivity = Auto(),  # noqa: B008 (immutable Module)
    solver=None,
    rtol: float = DEFAULT_TOL,
    atol: float = DEFAULT_TOL,
    dt0: float | None = None,
    max_steps: int = MAX_STEPS,
) -> Float[Array, ""]:
    """The multiple-shooting loss of `model` on the record `(ts, data)`.

    `ts` is cut into `n_segments` segments at
    [`jaxsens.shooting.segment_bounds`][]; segment `k` is solved from its own
    trainable start state `model.starts[k]` (all segments in one vmapped
    [`jaxsens.solve`][]), and

        loss = mean_i ‖ŷ(t_i) − data_i‖²
               + continuity_weight · mean_k ‖ŷ_k(end) − starts[k+1]‖²

    where each observation is counted once and the second mean runs over the
    `n_segments − 1` inner boundaries (squared norms are averaged over state
    components). `n_segments=1` is single shooting.

    **Arguments:**

    - `model`: a [`jaxsens.shooting.ShootingModel`][] (see
        [`jaxsens.shooting.init_model`][]); differentiate with respect to it.
    - `ts`: observation times `(T,)`, strictly increasing.
    - `data`: observed states `(T, ...)`, finite.
    - `n_segments`: number of segments, `1 ≤ n_segments ≤ T − 1`; must match
        `model.starts`.
    - `continuity_weight`: weight of the continuity penalty. Start around the
        data term's scale (`1.0` for data of order one) and raise it, or anneal it
        upwards, to force one continuous trajectory at the end of training.
    - `sensitivity`, `solver`, `rtol`, `atol`, `dt0`, `max_steps`: passed to
        [`jaxsens.solve`][] for every segment; any sensitivity method works.

    **Returns:** the scalar loss.

    **Example:**

    ```python
    import jax.numpy as jnp, optax, jaxsens
    ts = jnp.linspace(0.0, 4.0, 9)
    data = jnp.exp(-1.5 * ts)[:, None]
    field = lambda t, y, k: -k * y
    model = jaxsens.shooting.init_model(field, ts, data, 4, args=jnp.array(1.0))
    loss = lambda m, data: jaxsens.shooting.multiple_shooting_loss(
        m, ts, data, 4, continuity_weight=10.0, sensitivity=jaxsens.Forward())
    result = jaxsens.fit(model, loss, data, optax.adam(0.05), steps=3,
                         progress=False)
    result.model.args    # the rate, moving from 1.0 towards 1.5
    ```

    Opinion: use it whenever a single solve from `t0` spans more than a few
    oscillation periods or characteristic times; it is also a cheap way to
    parallelise a long solve. Initialise the parameters by collocation
    ([`jaxsens.collocation.two_stage_fit`][]) if you can.
    """
    ts, data = _check_data(ts, data)
    segments = _Segments.make(ts.shape[0], n_segments)
    _check_starts(model, n_segments, data)
    if isinstance(continuity_weight, (int, float)) and continuity_weight < 0:
        raise ValueError(
            f"`continuity_weight` must be >= 0, got {continuity_weight!r}."
        )
    _, ys, _ = predict_segments(model, ts, n_segments, sensitivity=sensitivity,
                                solver=solver, rtol=rtol, atol=atol, dt0=dt0,
                                max_steps=max_steps)
    state_size = int(np.prod(data.shape[1:], dtype=int))
    target = data[np.minimum(segments.index, ts.shape[0] - 1)]
    mask = segments.data_mask.reshape(segments.data_mask.shape + (1,) * (data.ndim - 1))
    sq = jnp.where(mask, (ys - target) ** 2, 0.0)
    data_term = jnp.sum(sq) / (ts.shape[0] * state_size)
    if n_segments == 1:
        return data_term
    ends = ys[np.arange(n_segments - 1), segments.lengths[:-1]]
    gap = jnp.sum((ends - model.starts[1:]) ** 2) / ((n_segments - 1) * state_size)
    return data_term + continuity_weight * gap


def _check_segments(n_times, n_segments):
    if not isinstance(n_segments, (int, np.integer)) or isinstance(n_segments, bool):
        raise TypeError(f"`n_segments` must be an int, got {n_segments!r}.")
    if n_times < 2:
        raise ValueError(
            f"Multiple shooting needs at least 2 observation times, got {n_times}."
        )
    if n_segments < 1:
        raise ValueError(f"`n_segments` must be >= 1, got {n_segments}.")
    if n_segments > n_times - 1:
        raise ValueError(
            f"`n_segments={n_segments}` is more segments than the {n_times - 1} "
            f"intervals between the {n_times} observation times: a segment must span "
            f"at least one interval. Use `n_segments <= {n_times - 1}`."
        )


def _check_data(ts, data):
    ts = jnp.asarray(ts)
    data = jnp.asarray(data)
    if ts.ndim != 1:
        raise ValueError(f"`ts` must be a 1-D array of observation times, got shape "
                         f"{ts.shape}.")
    if data.ndim < 2 or data.shape[0] != ts.shape[0]:
        raise ValueError(
            "`data` must have shape `(len(ts), *state_shape)` (one observed state per "
            f"time, e.g. `(T, n)`), got {data.shape} for {ts.shape[0]} times. For a "
            "scalar state use `data[:, None]`."
        )
    if not jnp.issubdtype(data.dtype, jnp.inexact):
        data = data.astype(jnp.result_type(float))
    data = eqx.error_if(
        data,
        ~jnp.all(jnp.isfinite(data)),
        "`data` contains NaN or inf. Remove or interpolate the missing samples "
        "before fitting.",
    )
    if ts.shape[0] > 1:
        ts = eqx.error_if(
            ts,
            jnp.any(ts[1:] <= ts[:-1]) | ~jnp.all(jnp.isfinite(ts)),
            "`ts` must be finite and strictly increasing.",
        )
    return ts, data


def _check_starts(model, n_segments, data):
    if not isinstance(model, ShootingModel):
        raise TypeError(
            "`model` must be a `jaxsens.shooting.ShootingModel`; build one with "
            "`jaxsens.shooting.init_model(field, ts, data, n_segments)`. Got "
            f"{model!r}."
        )
    starts = model.starts
    if starts.ndim < 1 or starts.shape[0] != n_segments:
        raise ValueError(
            f"`model.starts` has {starts.shape[0] if starts.ndim else 0} segment "
            f"start states but `n_segments={n_segments}`: build the model with the "
            "same `n_segments` (`jaxsens.shooting.init_model(..., n_segments)`)."
        )
    if data is not None and starts.shape[1:] != data.shape[1:]:
        raise ValueError(
            f"`model.starts` holds states of shape {starts.shape[1:]} but `data` holds "
            f"states of shape {data.shape[1:]}."
        )

