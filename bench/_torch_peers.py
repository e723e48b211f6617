"""torchdiffeq ports of the suite's problems (the peer from PyTorch), same weights,
same tolerances, dopri5.

`build(name, problem)` returns `({"torchdiffeq odeint": fn, "torchdiffeq
odeint_adjoint": fn}, torch_version)`, each `fn()` computing one gradient and
returning it flattened in the order of `ravel_pytree` of the jaxsens parameters
(so the suite's error column applies), or `({"_why": reason}, version)` for a
problem not ported. The controlled MLP's controls are one batched state
(torchdiffeq's usual way: one step size shared by all controls), the jaxsens rows
`jax.vmap`.
"""

import os

import numpy as np


NOT_PORTED = {
    "robertson": "torchdiffeq has no adaptive implicit solver (Robertson is stiff)",
    "heat2d": "not ported (matrix-free stencil)",
}


def build(name, pr):
    try:
        import torch
        import torchdiffeq
    except ImportError:
        return {}, None
    if name in NOT_PORTED:
        return {"_why": NOT_PORTED[name]}, torch.__version__
    # One thread for small states (per-op threading overhead dominates), all
    # cores for large ones.
    big = int(np.size(pr.y0)) * (int(np.shape(pr.args.values)[0]) if pr.batched else 1)
    torch.set_num_threads(max(1, os.cpu_count() or 1) if big >= 1000 else 1)
    dt = torch.float64 if np.asarray(pr.ts).dtype == np.float64 else torch.float32

    def T(x):
        return torch.tensor(np.asarray(x), dtype=dt)

    ts = T(pr.ts)
    y0 = T(pr.y0)
    t0 = None if pr.t0 is None else float(pr.t0)
    if t0 is not None and t0 != float(pr.ts[0]):
        raise NotImplementedError("t0 < ts[0]")

    if name == "lotka_volterra":
        params = [T(pr.params).requires_grad_()]

        def f(t, y):
            a, b, c, d = params[0]
            return torch.stack(
                [a * y[0] - b * y[0] * y[1], -c * y[1] + d * y[0] * y[1]]
            )

        def loss(ys):
            return (ys**2).sum()

    elif name in ("linear_rates", "rates_ude"):
        data = T(np.asarray(pr.loss.__closure__[0].cell_contents))  # (n, T)
        if name == "linear_rates":
            params = [T(pr.params).requires_grad_()]
        else:
            m = pr.params.mlp.layers
            params = [T(pr.params.P)] + [
                T(x) for layer in m for x in (layer.weight, layer.bias)
            ]
            params = [x.requires_grad_() for x in params]

        def f(t, y):
            P = params[0]
            out = P @ y - P.sum(1) * y
            if len(params) > 1:
                h = torch.tanh(y.reshape(-1, 4) @ params[1].T + params[2])
                out = out + (h @ params[3].T + params[4]).reshape(-1)
            return out

        def loss(ys):
            return ((ys.T - data) ** 2).sum()

    elif name.startswith("controls"):
        layers = pr.params.mlp.layers
        params = [
            T(x).requires_grad_()
            for layer in layers
            for x in (layer.weight, layer.bias)
        ]
        uts, uvals = T(pr.args.ts[0]), T(pr.args.values)  # (nc, NT)
        nc = uvals.shape[0]
        y0 = torch.zeros(nc, y0.shape[0], dtype=dt)
        act = torch.nn.functional.selu

        def f(t, y):
            i = torch.clamp(torch.searchsorted(uts, t.reshape(1)) - 1, 0, len(uts) - 2)[
                0
            ]
            w = (t - uts[i]) / (uts[i + 1] - uts[i])
            u = uvals[:, i] * (1 - w) + uvals[:, i + 1] * w
            h = torch.cat([y, u[:, None]], dim=1)
            k = len(params) // 2
            for j in range(k):
                h = h @ params[2 * j].T + params[2 * j + 1]
                if j < k - 1:
                    h = act(h)
            return h

        def loss(ys):  # (T, nc, 2)
            return (ys**2).sum() / ys.shape[0]

    elif name == "long_horizon":
        from bench.problems.core import LONG_DAMPING

        fld = pr.params
        params = [T(x).requires_grad_() for x in (fld.A, fld.W1, fld.b1)]

        def f(t, y):
            A, W1, b1 = params
            return A @ y - LONG_DAMPING * (W1.T @ torch.tanh(W1 @ y + b1))

        def loss(ys):
            return (ys**2).sum()

    else:
        return {"_why": "not ported"}, torch.__version__

    class Field(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.ps = torch.nn.ParameterList([torch.nn.Parameter(p) for p in params])

        def forward(self, t, y):
            return f(t, y)

    # `f` reads `params`; make them the Module's Parameters.
    field = Field()
    params[:] = list(field.ps)
    opts = dict(rtol=pr.rtol, atol=pr.atol, method="dopri5")

    def make(odeint, **kw):
        def grad():
            for p in params:
                p.grad = None
            ys = odeint(field, y0, ts, **opts, **kw)
            loss(ys).backward()
            return np.concatenate([p.grad.detach().numpy().ravel() for p in params])

        return grad

    return {
        "torchdiffeq odeint": make(torchdiffeq.odeint),
        "torchdiffeq odeint_adjoint": make(
            torchdiffeq.odeint_adjoint, adjoint_params=tuple(params)
        ),
    }, torch.__version__
