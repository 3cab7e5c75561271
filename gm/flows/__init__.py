"""Normalizing flows: the bijector contract, planar / coupling / Glow layers, architectures, and `make`.

    bijectors.py  the contract (forward / inverse with log|det|), Chain, Shift, Logit, Squeeze, FactorOut
    layers.py     AffineCoupling (RealNVP, Glow), ActNorm, Invertible1x1Conv (LU), Planar
    models.py     realnvp, glow, coupling_flow_2d, planar_flow; log_prob, sample_and_log_prob
    method.py     FlowConfig, Settings; make(settings, info) -> Method
"""
from gm.flows.bijectors import (Bijector, Chain, FactorOut, Logit, Shift, Squeeze, Unsqueeze, squeeze2x2,
                                sum_per_example, unsqueeze2x2)
from gm.flows.layers import (ActNorm, AffineCoupling, Invertible1x1Conv, Planar, coupling_mask, lu_weight,
                             planar_u_hat)
from gm.flows.method import FLOWS, FlowConfig, SamplingConfig, Settings, flow_from_config, make
from gm.flows.models import (coupling_flow_2d, glow, latent_shape, log_prob, planar_flow, realnvp,
                             sample_and_log_prob)
