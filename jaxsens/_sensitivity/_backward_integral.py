"""How a backward pass accumulates the parameter integral `∫ f_θᵀλ dt`."""

import equinox as eqx
import jax
import jax.lax as lax
import jax.numpy as jnp
import jax.tree_util as jtu

from ._backward import AbstractIntegral, tree_add, zeros_like
from ._loop import gauss_legendre
from .base import tree_size


class InState(AbstractIntegral):
    """`μ' = -f_θᵀλ` integrated with `λ`, as part of the backward ODE state: the
    same vjp gives both, but every stage's arithmetic (and an implicit solver's
    linear solves) carries all `p` entries. Chen et al. 2018."""

    in_state = True
    segmented = False

    def value(self, bp, z, carry):
        return z.mu


def step_nodes(bp, data, s_a, s_b, dense, nodes, weights, piece, unravel):
    """The Gauss–Legendre nodes of one backward step `[s_a, s_b]`: `(t, y, wλ)`
    with a leading axis of length `len(nodes)`, where `wλ` is `λ` (from the step's
    own interpolant of the loop's state) times the node's weight and the step
    length."""
    h = s_b - s_a
    s_nodes = s_a + nodes * h
    local = bp.solver.interpolation_cls(t0=s_a, t1=s_b, **dense)
    states = jax.vmap(lambda s: unravel(local.evaluate(s)))(s_nodes)
    ts = -s_nodes
    ys = bp.nodes_y(data, ts, states, piece)
    wh = weights * h
    lams = jtu.tree_map(lambda x: wh.reshape((-1,) + (1,) * (x.ndim - 1)) * x,
                        states.lam)
    return ts, ys, lams


class GaussPerStep(AbstractIntegral):
    """After each accepted backward step, `nodes` Gauss–Legendre points on the
    step's own interpolant, in ONE vjp of the node-batched field (θ shared, so
    the weighted sum over the nodes comes out of the vjp). No storage; the
    backward state is the size of `y`. SciMLSensitivity's `GaussAdjoint`."""

    nodes: int = eqx.field(static=True, default=3)
    in_state = False
    segmented = False

    def carry0(self, bp):
        return zeros_like(bp.problem.diff)

    def on_step(self, bp, data, mu, s_a, s_b, dense, aux, keep, unravel):
        x, w = gauss_legendre(self.nodes, jnp.result_type(bp.problem.ts))
        inc = bp.param_vjp(*step_nodes(bp, data, s_a, s_b, dense, x, w, aux, unravel))
        return tree_add(mu, jtu.tree_map(lambda g: jnp.where(keep, g, 0), inc))

    def value(self, bp, z, mu):
        return mu


class Store(eqx.Module):
    bufs: tuple
    count: jax.Array
    mu: object


# `StoredNodes`' defaults: a chunk (one vjp) moves about `CHUNK_BYTES` of nodes,
# states, cotangents and parameter cotangents; a store holds about
# `STORE_BYTES` of nodes, and at most `STORE_MAX_STEPS` steps.
CHUNK_BYTES = 2**20
STORE_BYTES = 2**22
CHUNK_MAX_STEPS = 32
STORE_MAX_STEPS = 256


class StoredNodes(AbstractIntegral):
    """Each accepted step leaves its `nodes` Gauss–Legendre points `(t, y, wλ)` in
    a store of `store_steps` steps; when it is full (and at the end) the store is
    integrated `chunk` steps × `nodes` points per vjp — the most parallel way to
    spend the parameter vjps. Memory does not grow with the number of steps.
    `chunk=None`/`store_steps=None` size both by the bytes a step's nodes take
    (`CHUNK_BYTES`, `STORE_BYTES`): large states get smaller stores, and the
    last, partly filled chunk wastes fewer vjps. SciMLSensitivity's
    `QuadratureAdjoint`; Cao, Li, Petzold & Serban 2003."""

    nodes: int = eqx.field(static=True, default=3)
    chunk: int | None = eqx.field(static=True, default=None)
    store_steps: int | None = eqx.field(static=True, default=None)
    in_state = False
    segmented = True

    def _step_bytes(self, bp, params: bool):
        """The bytes of one step's nodes: a state and a cotangent per node, and
        with `params` the node's share of the parameter vjp."""
        problem = bp.problem
        itemsize = jnp.dtype(jnp.result_type(problem.ts)).itemsize
        entries = 2 * tree_size(problem.y0) + (tree_size(problem.diff) if params else 0)
        return self.nodes * entries * itemsize

    def _chunk(self, bp):
        if self.chunk is not None:
            return self.chunk
        return max(1, min(CHUNK_MAX_STEPS, CHUNK_BYTES // self._step_bytes(bp, True)))

    def _size(self, bp):
        chunk = self._chunk(bp)
        steps = self.store_steps
        if steps is None:
            steps = max(chunk, min(STORE_MAX_STEPS,
                                   STORE_BYTES // self._step_bytes(bp, False)))
        steps = min(steps, bp.max_steps)
        return -(-steps // chunk) * chunk

    def carry0(self, bp):
        problem = bp.problem
        size = self._size(bp)
        dtype = jnp.result_type(problem.ts)
        stack = lambda x: jnp.zeros((size, self.nodes) + jnp.shape(x), jnp.result_type(x))  # noqa: E731
        lam_like = jtu.tree_map(lambda c: c[-1], bp.ys_bar)
        bufs = (jnp.zeros((size, self.nodes), dtype), jtu.tree_map(stack, problem.y0),
                jtu.tree_map(stack, lam_like))
        return Store(bufs, jnp.array(0, jnp.int32), zeros_like(problem.diff))

    def on_step(self, bp, data, store, s_a, s_b, dense, aux, keep, unravel):
        # Written in place every step; a rejected step's slot is overwritten by the
        # next one (no select over the whole store).
        x, w = gauss_legendre(self.nodes, jnp.result_type(bp.problem.ts))
        pts = step_nodes(bp, data, s_a, s_b, dense, x, w, aux, unravel)
        k = store.count
        bufs = jtu.tree_map(lambda buf, v: buf.at[k].set(v), store.bufs, pts)
        return Store(bufs, k + keep.astype(k.dtype), store.mu)

    def room(self, store):
        return store.count < store.bufs[0].shape[0]

    def flush(self, bp, store):
        bufs, count = store.bufs, store.count

        chunk = self._chunk(bp)

        def integrate_chunk(c, mu):
            i = c * chunk
            t, y, lam = jtu.tree_map(
                lambda x: lax.dynamic_slice_in_dim(x, i, chunk), bufs)
            # Unused slots (possibly a rejected step's non-finite values, or an
            # earlier segment's): weight zero, at a valid node (slot 0), so the
            # field is evaluated only where it was on the way back.
            valid = jnp.arange(chunk) + i < count
            mask = lambda x: valid.reshape((-1,) + (1,) * (x.ndim - 1))  # noqa: E731
            t, y = jtu.tree_map(lambda x, b: jnp.where(mask(x), x, b[0][None]),
                                (t, y), bufs[:2])
            lam = jtu.tree_map(lambda x: jnp.where(mask(x), x, 0), lam)
            merge = lambda x: x.reshape((-1,) + x.shape[2:])  # noqa: E731
            t, y, lam = jtu.tree_map(merge, (t, y, lam))
            return tree_add(mu, bp.param_vjp(t, y, lam))

        n_chunks = (count + chunk - 1) // chunk
        mu = lax.fori_loop(0, n_chunks, integrate_chunk, store.mu)
        return Store(bufs, jnp.zeros_like(count), mu)

    def value(self, bp, z, store):
        return store.mu
