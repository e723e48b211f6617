"""Multiple shooting: fit ODE models on segments solved in parallel (`jax.vmap`),
each from its own trainable start state, tied by a continuity penalty.

**Example:**

```python
import jax.numpy as jnp, jaxsens
ts = jnp.linspace(0.0, 4.0, 9)
data = jnp.exp(-ts)[:, None]
model = jaxsens.shooting.init_model(lambda t, y, k: -k * y, ts, data, 4, args=0.5)
jaxsens.shooting.multiple_shooting_loss(model, ts, data, 4, continuity_weight=1.0)
```
"""

from ._shooting import (
    ShootingModel as ShootingModel,
    init_model as init_model,
    multiple_shooting_loss as multiple_shooting_loss,
    predict_segments as predict_segments,
    segment_bounds as segment_bounds,
)
