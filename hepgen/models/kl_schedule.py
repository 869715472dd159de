"""KL-weight (beta) schedules for VAE training.

Starting with a small KL weight lets the decoder learn to use the latent code before the prior
pulls the posterior in (Bowman et al. 2016); cyclical annealing repeats the warm-up so codes
collapsed early get another chance (Fu et al. 2019).
"""

from __future__ import annotations

import math
from typing import Literal

KLScheduleName = Literal["constant", "linear", "sigmoid", "cyclical"]


def kl_weight(step: int, schedule: KLScheduleName, warmup_steps: int, beta_max: float, cycles: int = 4) -> float:
    """The KL weight beta at optimizer step ``step``.

    * ``constant``: ``beta_max`` throughout.
    * ``linear``: ``beta_max * step / warmup_steps``, then ``beta_max``.
    * ``sigmoid``: a logistic ramp centred at ``warmup_steps / 2`` reaching ``beta_max``.
    * ``cyclical``: ``cycles`` linear ramps over ``warmup_steps`` steps, each rising during
      the first half of its cycle and holding ``beta_max`` in the second; ``beta_max`` after.
    """
    if schedule == "constant" or warmup_steps <= 0 or step >= warmup_steps:
        return beta_max
    progress = step / warmup_steps
    if schedule == "linear":
        return beta_max * progress
    if schedule == "sigmoid":
        return beta_max / (1.0 + math.exp(-12.0 * (progress - 0.5)))
    if schedule == "cyclical":
        phase = (progress * cycles) % 1.0
        return beta_max * min(1.0, 2.0 * phase)
    raise ValueError(f"kl_schedule={schedule!r}: choose constant, linear, sigmoid or cyclical.")
