"""Fitting: the pair sampler, the losses and the optimisation loop."""

from omnifast.train.losses import compute_losses, learning_rate_factor, loss_weights
from omnifast.train.sampler import Batch, PairSampler
from omnifast.train.trainer import FitError, FitInterrupted, Trainer

__all__ = ["Batch", "FitError", "FitInterrupted", "PairSampler", "Trainer", "compute_losses",
           "learning_rate_factor", "loss_weights"]
