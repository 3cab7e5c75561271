"""gm: deep generative models as pure JAX functions behind one small contract (`gm.Method`).

Modules: distributions (log-probs, the bits/dim convention), diffusion, nn (networks), data,
train (state, loop), parallel (the only device code), checkpoint (the only Orbax code), metrics.
"""
from gm import distributions
from gm.method import Method

__all__ = ["Method", "distributions"]
__version__ = "0.1.0"
