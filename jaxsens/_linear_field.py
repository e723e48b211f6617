"""`LinearField`: a time-invariant linear vector field `y' = A(args) y (+ b(args))`."""

import inspect
from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import lineax as lx
import numpy as np
from jaxtyping import Array, ArrayLike, Float, PyTree


_TIME_NAMES = ("t", "time")


def _positional_names(fn) -> list[str] | None:
    """Names of the required positional parameters of `fn`, or None if unknown."""
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return None
    names = []
    for p in sig.parameters.values():
        if p.kind is p.VAR_POSITIONAL:
            return None
        if (
            p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
            and p.default is p.empty
        ):
            names.append(p.name)
    return names


def _time_dependent_error(what: str, names: list[str]) -> ValueError:
    return ValueError(
        f"`LinearField`: `{what}` takes ({', '.join(names)}), which looks like a "
        "time-dependent term. `LinearField` declares a time-invariant system "
        "`y' = A(args) y + b(args)` (that is what makes `expm` exact), so `matrix` "
        "and `forcing` are functions of `args` only and `matvec` of `(args, v)`. For "
        "a time-dependent `A(t)` or `b(t)`, write an ordinary field, e.g. "
        "`field = lambda t, y, args: A(t, args) @ y`, and use a time-stepping "
        "method such as `jaxsens.InterpolatingAdjoint()`."
    )


def _check_args_callable(what: str, fn) -> None:
    names = _positional_names(fn)
    if names is None:
        return
    if len(names) >= 2 or (len(names) == 1 and names[0] in _TIME_NAMES):
        raise _time_dependent_error(what, names)
    if len(names) == 0:
        raise ValueError(
            f"`LinearField`: a callable `{what}` is called as `{what}(args)`, but it "
            "takes no positional argument. Write it as `lambda args: ...` (ignore "
            "`args` if you do not need it), or pass the array itself."
        )


def _is_array(x) -> bool:
    return isinstance(x, (jax.Array, np.ndarray, np.generic, float, int, list, tuple))


class LinearField(eqx.Module):
    """A time-invariant linear vector field `y' = A(args) y + b(args)`.

    Declaring a system linear lets [`jaxsens.LinearExpm`][] solve it exactly with the
    matrix exponential (no time steps, no tolerance) and [`jaxsens.KrylovExpm`][]
    solve large, matrix-free ones with Krylov expm-actions, both with exact
    gradients. A `LinearField` is also an ordinary field `field(t, y, args)`, so every
    other method (`Discrete()`, `InterpolatingAdjoint()`, ...) accepts it too, which
    makes it easy to check one method against another.

    **Arguments:**

    - `matrix`: `A`, given as one of
        - an `(n, n)` array (trainable: gradients flow to it);
        - a `lineax.AbstractLinearOperator` (e.g. `lx.TridiagonalLinearOperator`,
          or `lx.FunctionLinearOperator` for a matrix-free stencil); its arrays are
          trainable;
        - a function (or `eqx.Module`) of `args` returning either of the above,
          e.g. `lambda P: P - jnp.diag(P.sum(1))` (a rate matrix).
    - `forcing`: `b`, a constant source term: `None` (default), an `(n,)` array, or a
        function of `args` returning one.
    - `matvec` (keyword only, instead of `matrix`): a matrix-free operator given by
        its action, `matvec(args, v) -> A(args) @ v`, linear in `v`. The state size
        is taken from `y0`. This is the form for large stencils (heat equations):
        `KrylovExpm` then never forms an `n x n` matrix; `LinearExpm` materialises
        `A` column by column.
    - `tags` (keyword only): lineax tags describing `A` when it is given as an array,
        a function returning an array, or `matvec`, e.g. `lineax.symmetric_tag`
        (unchecked, as in lineax): `KrylovExpm` then uses the Lanczos process,
        O(n) instead of O(n m) work per Krylov vector. A lineax operator carries
        its own tags.

    `A` and `b` must not depend on time: a callable `matrix(t, args)` is rejected
    with a pointer to the time-stepping methods. The state `y` is a 1-D array.

    **Returns:** a field; `field(t, y, args)` returns `A(args) @ y + b(args)`.

    **Example:**

    ```python
    import jax, jax.numpy as jnp, jaxsens

    P = jax.random.uniform(jax.random.key(0), (100, 100))
    field = jaxsens.LinearField(lambda P: P - jnp.diag(P.sum(1)))
    data = jax.random.uniform(jax.random.key(1), (100, 4))
    ts = jnp.array([1.0, 2.0, 3.0, 4.0])

    def loss(P):
        sol = jaxsens.solve(field, data[:, 0], ts, P, sensitivity=jaxsens.LinearExpm())
        return jnp.sum((sol.ys.T - data) ** 2)

    jax.jit(jax.grad(loss))(P)  # exact gradient w.r.t. all 10^4 rates
    ```

    A matrix-free operator (a 1-D diffusion stencil), differentiable w.r.t. `D`:

    ```python
    def stencil(D, v):
        return D * (jnp.roll(v, 1) - 2 * v + jnp.roll(v, -1))

    field = jaxsens.LinearField(matvec=stencil)
    sol = jaxsens.solve(field, jnp.sin(jnp.linspace(0, 3, 50)), jnp.array([0.1, 0.2]),
                        0.5, sensitivity=jaxsens.KrylovExpm())
    ```
    """

    matrix: Any
    forcing: Any
    matvec: Callable | None
    tags: frozenset = eqx.field(static=True)

    def __init__(
        self,
        matrix: Float[ArrayLike, "n n"]
        | lx.AbstractLinearOperator
        | Callable
        | None = None,
        forcing: Float[ArrayLike, " n"] | Callable | None = None,
        *,
        matvec: Callable | None = None,
        tags: object = (),
    ):
        if (matrix is None) == (matvec is None):
            raise ValueError(
                "`LinearField` needs exactly one of `matrix` (an array, a lineax "
                "operator, or a function of `args` returning one) and `matvec=` (a "
                "function `matvec(args, v) -> A @ v`); got "
                + ("neither." if matrix is None else "both.")
            )
        if matrix is not None:
            if isinstance(matrix, lx.AbstractLinearOperator):
                _check_operator(matrix)
            elif _is_array(matrix):
                matrix = jnp.asarray(matrix)
                _check_square(matrix.shape)
            elif callable(matrix):
                _check_args_callable("matrix", matrix)
            else:
                raise TypeError(
                    "`LinearField(matrix=...)` must be an (n, n) array, a lineax "
                    f"operator, or a function of `args`; got {type(matrix).__name__}."
                )
        if matvec is not None:
            if not callable(matvec):
                raise TypeError(
                    f"`LinearField(matvec=...)` must be a function `matvec(args, v)`; "
                    f"got {type(matvec).__name__}."
                )
            names = _positional_names(matvec)
            if names is not None:
                if len(names) >= 3 or (names and names[0] in _TIME_NAMES):
                    raise _time_dependent_error("matvec", names)
                if len(names) != 2:
                    raise ValueError(
                        "`LinearField(matvec=...)` is called as `matvec(args, v)` and "
                        "must take two positional arguments; it takes "
                        f"({', '.join(names)})."
                    )
        if forcing is not None:
            if _is_array(forcing):
                forcing = jnp.asarray(forcing)
                if forcing.ndim != 1:
                    raise ValueError(
                        "`LinearField(forcing=...)` must be a 1-D array `b` of shape "
                        f"(n,), got shape {forcing.shape}."
                    )
            elif callable(forcing):
                _check_args_callable("forcing", forcing)
            else:
                raise TypeError(
                    "`LinearField(forcing=...)` must be a 1-D array or a function of "
                    f"`args`; got {type(forcing).__name__}."
                )
        self.matrix = matrix
        self.forcing = forcing
        self.matvec = matvec
        if isinstance(tags, (tuple, list, set, frozenset)):
            self.tags = frozenset(tags)
        else:
            self.tags = frozenset([tags])

    def is_matrix_free(self, args: PyTree) -> bool:
        """True when `A(args)` is given by its action only (`matvec=`, or a lineax
        operator other than `MatrixLinearOperator`). Decided at trace time."""
        if self.matvec is not None:
            return True
        if isinstance(self.matrix, lx.AbstractLinearOperator):
            op = self.matrix
        elif callable(self.matrix):
            op = eqx.filter_eval_shape(self.matrix, args)
        else:
            return False
        return isinstance(op, lx.AbstractLinearOperator) and not isinstance(
            op, lx.MatrixLinearOperator
        )

    def operator(
        self, args: PyTree, y: Float[Array, " n"]
    ) -> lx.AbstractLinearOperator:
        """`A(args)` as a lineax operator acting on states shaped like `y`.

        Raises `ValueError` if its shape does not match `y`.
        """
        if self.matvec is not None:
            struct = jax.ShapeDtypeStruct(jnp.shape(y), jnp.result_type(y))
            matvec = self.matvec
            op = lx.FunctionLinearOperator(lambda v: matvec(args, v), struct, self.tags)
        else:
            a = self.matrix
            if callable(a) and not isinstance(a, lx.AbstractLinearOperator):
                a = a(args)
            if isinstance(a, lx.AbstractLinearOperator):
                op = a
            elif _is_array(a):
                a = jnp.asarray(a)
                _check_square(a.shape)
                op = lx.MatrixLinearOperator(a, self.tags)
            else:
                raise TypeError(
                    "`LinearField`: `matrix(args)` must return an (n, n) array or a "
                    f"lineax operator, got {type(a).__name__}."
                )
        _check_operator(op, y)
        return op

    def forcing_vector(self, args: PyTree, y: Float[Array, " n"]) -> Array | None:
        """`b(args)`, or None without forcing."""
        b = self.forcing
        if b is None:
            return None
        if callable(b):
            b = jnp.asarray(b(args))
        if b.shape != jnp.shape(y):
            raise ValueError(
                f"`LinearField`: the forcing `b` has shape {b.shape} but the state `y` "
                f"has shape {jnp.shape(y)}; they must match."
            )
        return b

    def dense_matrix(self, args: PyTree, y: Float[Array, " n"]) -> Float[Array, "n n"]:
        """`A(args)` as an `(n, n)` array (materialised if given matrix-free)."""
        op = self.operator(args, y)
        if isinstance(op, lx.MatrixLinearOperator):
            return op.matrix
        return op.as_matrix()

    def __call__(self, t, y: Float[Array, " n"], args: PyTree) -> Float[Array, " n"]:
        del t
        _check_state(y)
        out = self.operator(args, y).mv(y)
        b = self.forcing_vector(args, y)
        return out if b is None else out + b


def _check_state(y) -> None:
    if not isinstance(y, (jax.Array, np.ndarray)) or jnp.ndim(y) != 1:
        what = (
            f"shape {jnp.shape(y)}"
            if isinstance(y, (jax.Array, np.ndarray))
            else f"a {type(y).__name__}"
        )
        raise ValueError(
            "`LinearField` acts on a 1-D state vector `y` of shape (n,); got "
            f"{what}. Flatten the state, e.g. with `jax.flatten_util.ravel_pytree`."
        )


def _check_square(shape) -> None:
    if len(shape) != 2 or shape[0] != shape[1]:
        raise ValueError(
            "`LinearField`: `A` must be a square (n, n) matrix, got shape "
            f"{tuple(shape)}."
        )


def _check_operator(op: lx.AbstractLinearOperator, y=None) -> None:
    in_s, out_s = op.in_structure(), op.out_structure()
    if not (
        isinstance(in_s, jax.ShapeDtypeStruct)
        and isinstance(out_s, jax.ShapeDtypeStruct)
    ):
        raise ValueError(
            "`LinearField`: the operator must act on a single 1-D array (not a "
            "PyTree of arrays)."
        )
    if in_s.shape != out_s.shape or len(in_s.shape) != 1:
        raise ValueError(
            "`LinearField`: `A` must be square, mapping (n,) to (n,); the operator "
            "maps "
            f"{in_s.shape} to {out_s.shape}."
        )
    if y is not None and in_s.shape != jnp.shape(y):
        raise ValueError(
            f"`LinearField`: `A` acts on states of shape {in_s.shape} but `y0` has "
            "shape "
            f"{jnp.shape(y)}. Check that `A` is (n, n) with n = len(y0)."
        )


def linear_parts(field, y0, args, method: str):
    """The checks `LinearExpm`/`KrylovExpm` share: returns the field, as a LinearField.

    Raises a `ValueError` naming the alternative for anything that is not a
    `LinearField`, and for a state that is not a 1-D array.
    """
    if not isinstance(field, LinearField):
        raise ValueError(
            f"`{method}` needs a `jaxsens.LinearField`, got `{type(field).__name__}`. "
            "Declare a linear system as `jaxsens.LinearField(A)`; for a non-linear "
            "field use a time-stepping method such as `jaxsens.InterpolatingAdjoint()`."
        )
    if not isinstance(y0, jax.Array) or y0.ndim != 1:
        what = f"shape {y0.shape}" if isinstance(y0, jax.Array) else "a PyTree"
        raise ValueError(
            f"`{method}` needs `y0` to be a 1-D array (the state vector), got {what}. "
            "Flatten the state, e.g. with `jax.flatten_util.ravel_pytree`."
        )
    return field
