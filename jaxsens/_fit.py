"""`jaxsens.fit`: a training loop on optax, and saving/loading trained models."""

import os
from collections.abc import Callable, Iterator
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jaxtyping import PyTree


class FitResult(eqx.Module):
    """What [`jaxsens.fit`][] returns.

    - `model`: the trained model (same structure as the one passed in).
    - `losses`: the loss before each update, a NumPy array of length `steps`
        (shorter if a callback stopped early).
    - `opt_state`: the optimiser state, to resume with `fit(..., opt_state=...)`.
    """

    model: PyTree
    losses: np.ndarray
    opt_state: PyTree


def _split(model, filter_spec):
    params, static = eqx.partition(model, filter_spec)
    # Weakly typed leaves (`jnp.array(0.0)`) turn strong after one update, which
    # would retrace the step once: make them strong up front.
    params = jax.tree_util.tree_map(
        lambda x: jax.lax.convert_element_type(x, jnp.result_type(x)), params)
    if not jax.tree_util.tree_leaves(params):
        raise ValueError(
            "`fit`: the model has no trainable leaves under `filter_spec` (by default "
            "every inexact JAX array). Check that the model holds its parameters as "
            "`jnp` arrays."
        )
    return params, static


@eqx.filter_jit
def _step(loss_fn, optimizer, params, static, opt_state, batch):
    def loss_of(p):
        loss = loss_fn(eqx.combine(p, static), batch)
        if jnp.shape(loss) != ():
            raise ValueError(
                "`fit`: `loss_fn(model, data)` must return a scalar, got shape "
                f"{jnp.shape(loss)}. Reduce it, e.g. with `jnp.mean`."
            )
        return loss

    loss, grads = jax.value_and_grad(loss_of)(params)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss


def fit(
    model: PyTree,
    loss_fn: Callable[[PyTree, Any], jax.Array],
    data: PyTree | Iterator,
    optimizer: optax.GradientTransformation,
    steps: int,
    *,
    filter_spec: Any = eqx.is_inexact_array,
    opt_state: PyTree = None,
    callback: Callable[[int, PyTree, float], Any] | None = None,
    progress: bool = True,
    desc: str = "fit",
) -> FitResult:
    """Train `model` by minimising `loss_fn(model, data)` with an optax optimiser.

    Each step is one compiled function (`eqx.filter_jit` of value-and-grad plus the
    optax update), traced once and reused for every step and for later `fit` calls
    with the same `loss_fn`, `optimizer` and data shapes. The progress bar (tqdm)
    shows the current loss.

    **Arguments:**

    - `model`: any PyTree, e.g. a `jaxsens.nn.NeuralODE`, a `jaxsens.Control` (to
        optimise a control), or a tuple of them.
    - `loss_fn`: `loss_fn(model, data) -> scalar`. Batches of trajectories go in
        here: `jax.vmap` over controls or initial states (or `model.batched`).
    - `data`: passed to `loss_fn` at every step; or an iterator yielding one batch
        per step (every batch of the same shapes, else each new shape compiles).
    - `optimizer`: an `optax.GradientTransformation`, e.g. `optax.adam(1e-2)`.
    - `steps`: the number of updates.
    - `filter_spec`: which leaves are trained (default: every inexact array), as
        for `eqx.partition`; the rest are held fixed.
    - `opt_state`: resume from this optimiser state (default: `optimizer.init`).
    - `callback`: called as `callback(step, model, loss)` after each update;
        returning `True` stops training.
    - `progress`: show the progress bar.
    - `desc`: the progress bar's label.

    **Returns:** a [`jaxsens.FitResult`][] with the trained `model`, the `losses`
    (NumPy array) and the `opt_state`.

    **Example:**

    ```python
    import jax, jax.numpy as jnp, jax.random as jr, optax, jaxsens

    ts = jnp.linspace(0.0, 1.0, 10)
    target = jnp.stack([jnp.exp(-ts), jnp.exp(-2 * ts)], axis=1)
    model = jaxsens.nn.NeuralODE(jaxsens.nn.MLPField(2, width=8, depth=1,
                                                     key=jr.key(0)))
    loss = lambda m, y: jnp.mean((m(jnp.ones(2), ts) - y) ** 2)
    result = jaxsens.fit(model, loss, target, optax.adam(1e-2), steps=20,
                         progress=False)
    result.losses[-1] < result.losses[0]    # True
    jaxsens.save_model("model.eqx", result.model)
    ```
    """
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
        raise ValueError(f"`fit(steps=...)` must be a non-negative int, got {steps!r}.")
    if not isinstance(optimizer, optax.GradientTransformation):
        raise TypeError(
            "`fit(optimizer=...)` must be an optax optimiser such as "
            f"`optax.adam(1e-3)`, got {optimizer!r}."
        )
    if not callable(loss_fn):
        raise TypeError(f"`fit(loss_fn=...)` must be callable, got {loss_fn!r}.")
    from tqdm.auto import tqdm

    params, static = _split(model, filter_spec)
    if opt_state is None:
        opt_state = optimizer.init(params)
    batches = data if isinstance(data, Iterator) else None
    losses = []
    with tqdm(total=steps, desc=desc, disable=not progress, leave=True) as bar:
        for step in range(steps):
            batch = next(batches) if batches is not None else data
            params, opt_state, loss = _step(
                loss_fn, optimizer, params, static, opt_state, batch
            )
            value = float(loss)
            losses.append(value)
            bar.set_postfix(loss=f"{value:.4g}", refresh=False)
            bar.update()
            if callback is not None and callback(step, eqx.combine(params, static),
                                                 value):
                break
    return FitResult(eqx.combine(params, static), np.asarray(losses), opt_state)


def save_model(path: str | os.PathLike, model: PyTree) -> None:
    """Save the arrays of `model` to `path` (`eqx.tree_serialise_leaves`).

    Only the leaves are stored, not the structure: load with a model of the same
    structure built by the same code, e.g. with the same constructor arguments.

    **Arguments:** `path`, a file name; `model`, any PyTree of arrays.

    **Example:**

    ```python
    import jax.random as jr, jaxsens
    model = jaxsens.nn.MLPField(2, width=8, depth=1, key=jr.key(0))
    jaxsens.save_model("field.eqx", model)
    like = jaxsens.nn.MLPField(2, width=8, depth=1, key=jr.key(1))
    same = jaxsens.load_model("field.eqx", like)
    ```
    """
    eqx.tree_serialise_leaves(path, model)


def load_model(path: str | os.PathLike, like: PyTree) -> PyTree:
    """Load a model saved by [`jaxsens.save_model`][].

    **Arguments:** `path`; `like`, a model of the same structure (its values are
    replaced).

    **Returns:** `like` with the saved arrays.
    """
    if not os.path.exists(path):
        raise FileNotFoundError(f"`load_model`: no saved model at {str(path)!r}.")
    try:
        return eqx.tree_deserialise_leaves(path, like)
    except Exception as e:  # noqa: BLE001 - re-raised with the fix
        raise ValueError(
            f"`load_model`: {str(path)!r} does not match the structure of `like` "
            f"({e}). Build `like` with the same constructor arguments as the saved "
            "model."
        ) from e
