"""gm: deep generative models as pure JAX functions behind one small contract (`gm.Method`).

Modules, from the bottom up: method (the contract), config (base sections, typed parsing), checks,
optim, distributions, ode, optimal_transport, audio, tokenize, captions, data, parallel (the only device
code) and nn (networks); the families (autoregressive, vae, vqvae, gan, flows, diffusion with its
continuous-time score SDEs, EDM and VDM, flow_matching, wavenet, gpt, dalle);
families (the registry); train
(state and step, loop, evaluators, the command line); checkpoint (the only Orbax code); metrics.
"""
from gm import distributions
from gm.method import Method, Training

__all__ = ["Method", "Training", "distributions"]
__version__ = "0.1.0"
