"""Denoising diffusion models as pure functions: DDPM (Ho et al. 2020), improved DDPM (Nichol & Dhariwal
2021: learned variances, the hybrid loss, importance-sampled timesteps, cosine schedule, respacing),
classifier-free guidance (Ho & Salimans 2022), DDIM and the probability-flow ODE (Song et al. 2021).

Timesteps are 0-based (the paper's t = 1 is index 0) and model space is [-1, 1]
(`gm.distributions.levels_to_symmetric`). The math takes a `Schedule` (float32 constants of length T)
and a model function `(x_t, t) -> out` (eps, or eps and v for learned variances), so it composes with
any network in a notebook; `make(Settings, info)` wires it to the UNet and returns a `gm.method.Method`.

    schedule   betas, Schedule, respacing, continuous-time log alpha-bar
    process    q(x_t | x_0), the posterior, the reverse Gaussian, the bound (nats)
    losses     L_simple, L_hybrid, importance-sampled timesteps
    samplers   ancestral, DDIM, probability-flow ODE (through gm.ode), classifier-free guidance
    method     the Method and the Diffusion bundle behind it

Continuous time (Song et al. 2021; Karras et al. 2022; Lu et al. 2022), as submodules:

    sde             VE / VP / sub-VP SDEs: marginals, score matching, PC and ODE samplers, ODE likelihood
    edm             EDM's preconditioning, loss, Karras schedule and Heun sampler (sigma space)
    dpm_solver      DPM-Solver++ (1st to 3rd order multistep); DDPM networks in sigma space
    sigma_sampling  one config section and dispatch for the sigma-space samplers
    continuous      the score_sde and edm families
    vdm             variational diffusion models: the learned schedule, the continuous-time ELBO, the family
"""
from gm.diffusion.losses import (LOSSES, TIMESTEP_SAMPLING, LossHistory, importance_probs, init_loss_history,
                                 per_example_losses, sample_timesteps, simple_loss, timestep_loss_sums,
                                 update_loss_history)
from gm.diffusion.method import (SAMPLERS, Diffusion, DiffusionConfig, Settings, build, check_sampling, make,
                                 sample)
from gm.diffusion.process import (VAR_TYPES, _at, fixed_log_variance, learned_log_variance, output_channels,
                                  p_mean_log_variance, predict_x0_from_eps, prior_kl, q_posterior, q_sample,
                                  split_output, vlb, vlb_term, vlb_terms)
from gm.diffusion.samplers import (ancestral_sample, ddim_sample, ddim_timesteps, guided_model_fn, ode_sample,
                                   probability_flow_velocity, respaced_model_fn)
from gm.diffusion.schedule import (SCHEDULES, SPACINGS, Respaced, Schedule, beta_at, betas_from_name, cosine_betas,
                                   linear_betas, log_alphas_cumprod_at, make_schedule, respace, respaced_betas,
                                   schedule_from_name, space_timesteps, spaced_timesteps)
