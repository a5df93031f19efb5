"""The rectified flow of Stable Diffusion 3 as a schedule that the DPM-Solver++ of ``tficon.core.solver`` integrates.

SD3 is trained on the straight path between data and noise,

    x_sigma = (1 - sigma) x0 + sigma eps,        sigma in [0, 1],

and its transformer predicts the velocity ``v = eps - x0`` (``FlowMatchEulerDiscreteScheduler``). This is a diffusion
with signal scale ``alpha = 1 - sigma`` and noise scale ``sigma``: the same form ``x = alpha x0 + sigma eps`` that the
DPM-Solver++ update is written in, only with ``alpha^2 + sigma^2 != 1`` (the data-prediction update never uses that
identity). The data prediction is

    D(x, sigma) = x - sigma v                                                     (= alpha x0 + sigma eps - sigma eps + sigma x0)

so the solver's multistep updates of order 1, 2 and 3 integrate the flow's ODE unchanged, with the same step counts,
orders and control flow as on the UNet path. Its order-1 update is exactly the flow's Euler step (DDIM).

**Time.** The solver runs on a time ``t`` in (0, 1] and the grid is uniform in ``t``, as on the UNet path. ``t`` is
the flow's *unshifted* time; the schedule's ``shift`` (3.0 for SD3) bends it into the noise level

    sigma(t) = shift t / (1 + (shift - 1) t),        alpha(t) = 1 - sigma(t) = (1 - t) / (1 + (shift - 1) t),

which is the shift ``FlowMatchEulerDiscreteScheduler`` applies to its own linear grid. ``alpha`` is computed from
its closed form, not as ``1 - sigma``, so that it keeps full relative precision near t = 1. The half log-SNR is

    lambda(t) = log(alpha / sigma) = log(1 - t) - log(shift t).

The transformer's timestep input is ``sigma(t) * num_train_timesteps`` (what the diffusers pipeline passes).

**The noisy end.** At t = 1, alpha = 0 and lambda = -inf: the inversion's last update would multiply 0 by inf. The
grid therefore ends at ``t_start = 1 - 1 / num_train_timesteps`` (sigma = 0.99967 with shift 3), where lambda is
finite (-8.0); sampling starts there from pure noise, which misses a 3e-4 share of signal, and inversion ends there,
so the two meet at the same point. The clean end is ``t_end = 1 / num_train_timesteps`` as on the UNet path (sigma =
0.003 with shift 3); the final latent is decoded as it is, with no last Euler step to sigma = 0.

Everything is float32, like the rest of the solver.
"""

from __future__ import annotations

import math
from typing import Mapping

import torch
from torch import Tensor

__all__ = ["FLOW_PREDICTION", "FlowSchedule", "flow_data_prediction"]

#: the ``prediction_type`` name of a velocity-predicting flow model (``tficon.core.solver.to_data_prediction``)
FLOW_PREDICTION = "flow_prediction"  # diffusers' name for it (e.g. DPMSolverMultistepScheduler)


def _as_time(t) -> Tensor:
    if isinstance(t, Tensor):
        return t.to(torch.float32)
    if isinstance(t, bool) or not isinstance(t, (int, float)):
        raise TypeError(f"t must be a float or a torch.Tensor of times in (0, 1), got {type(t).__name__}")
    return torch.tensor(float(t), dtype=torch.float32)


class FlowSchedule:
    """The rectified flow's schedule, with the interface of ``tficon.core.solver.NoiseSchedule`` (module docstring).

    Args:
        shift: the scheduler's time shift (SD3: 3.0); 1.0 is the unshifted flow, sigma = t.
        num_train_timesteps: the scheduler's (1000); fixes the model's time units and the grid's ends.
    """

    def __init__(self, shift: float = 3.0, num_train_timesteps: int = 1000):
        if isinstance(shift, bool) or not isinstance(shift, (int, float)) or not math.isfinite(shift) or shift <= 0:
            raise ValueError(f"shift must be a positive number (SD3 uses 3.0), got {shift!r}")
        if isinstance(num_train_timesteps, bool) or not isinstance(num_train_timesteps, int) or num_train_timesteps < 2:
            raise ValueError(f"num_train_timesteps must be an integer >= 2, got {num_train_timesteps!r}")
        self.shift = float(shift)
        self.num_train_timesteps = num_train_timesteps
        #: the grid's noisy end: alpha(1) = 0 has no finite lambda (module docstring)
        self.t_start = 1.0 - 1.0 / num_train_timesteps
        #: the grid's clean end, as on the UNet path
        self.t_end = 1.0 / num_train_timesteps

    @classmethod
    def from_scheduler_config(cls, config: Mapping) -> "FlowSchedule":
        """From a ``FlowMatchEulerDiscreteScheduler`` config: ``shift`` and ``num_train_timesteps``. Dynamic
        (resolution-dependent) shifting and the other sigma schedules are refused by name."""
        if not isinstance(config, Mapping):
            raise TypeError(f"config must be a mapping (a diffusers scheduler config), got {type(config).__name__}")
        for key in ("use_dynamic_shifting", "use_karras_sigmas", "use_exponential_sigmas", "use_beta_sigmas",
                    "invert_sigmas"):  # fmt: skip
            if config.get(key):
                raise ValueError(f"scheduler config sets {key}; tficon runs the flow with a fixed shift only")
        if config.get("shift_terminal"):
            raise ValueError("scheduler config sets shift_terminal; tficon runs the flow with a fixed shift only")
        return cls(float(config.get("shift", 1.0)), int(config.get("num_train_timesteps", 1000)))

    def sigma(self, t) -> Tensor:
        """Noise scale ``shift t / (1 + (shift - 1) t)``."""
        t = _as_time(t)
        return self.shift * t / (1.0 + (self.shift - 1.0) * t)

    def alpha(self, t) -> Tensor:
        """Signal scale ``(1 - t) / (1 + (shift - 1) t)`` (= 1 - sigma, without the cancellation near t = 1)."""
        t = _as_time(t)
        return (1.0 - t) / (1.0 + (self.shift - 1.0) * t)

    def log_alpha(self, t) -> Tensor:
        return torch.log(self.alpha(t))

    def lambda_(self, t) -> Tensor:
        """Half log-SNR ``log(1 - t) - log(shift t)``."""
        t = _as_time(t)
        return torch.log1p(-t) - torch.log(self.shift * t)

    def model_time(self, t) -> Tensor:
        """The transformer's timestep: ``sigma(t) * num_train_timesteps`` (1000 sigma for SD3), not rounded."""
        return self.sigma(t) * float(self.num_train_timesteps)

    def __repr__(self) -> str:
        return f"FlowSchedule(shift={self.shift:g}, num_train_timesteps={self.num_train_timesteps})"


def flow_data_prediction(velocity: Tensor, x: Tensor, sigma: Tensor) -> Tensor:
    """The data prediction of a velocity model: ``D = x - sigma v`` (``sigma`` scalar or broadcastable to ``x``)."""
    return x - sigma * velocity
