"""Fitting: the pair sampler, the losses and the optimisation loop."""

from omnifast.train.losses import (
    compute_losses,
    learning_rate_factor,
    loss_weight_tensor,
    loss_weights,
    step_losses,
)
from omnifast.train.sampler import Batch, BatchPrefetcher, PairSampler
from omnifast.train.trainer import CudaGraphStep, FitError, FitInterrupted, Trainer

__all__ = ["Batch", "BatchPrefetcher", "CudaGraphStep", "FitError", "FitInterrupted",
           "PairSampler", "Trainer", "compute_losses", "learning_rate_factor",
           "loss_weight_tensor", "loss_weights", "step_losses"]
