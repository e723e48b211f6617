"""Collocation (two-stage) fitting: smooth noisy samples, fit the field to the
smoothed slopes without solving the ODE, then refine by shooting.

Caveat: collocation cannot see error accumulation along a trajectory; refine by
shooting (`two_stage_fit`).

**Example:**

```python
import jax.numpy as jnp, jaxsens
ts = jnp.linspace(0.0, 3.0, 31)
sm = jaxsens.collocation.smooth(ts, jnp.exp(-2.0 * ts)[:, None])
jaxsens.collocation.collocation_loss(lambda t, y, k: -k * y, sm, 2.0)   # ≈ 0
```
"""

from ._collocation import (
    CollocationFit as CollocationFit,
    Smoothing as Smoothing,
    TwoStageFit as TwoStageFit,
    collocation_loss as collocation_loss,
    fit as fit,
    smooth as smooth,
    two_stage_fit as two_stage_fit,
)
