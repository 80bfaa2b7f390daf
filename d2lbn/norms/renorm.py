"""Batch Renormalization (Ioffe, NeurIPS 2017): BN that trains with the moving statistics.

Training standardises with the batch's statistics corrected towards the moving
ones: ``(x - mu_B) / sigma_B * r + d`` with ``r = sigma_B / sigma`` and
``d = (mu_B - mu) / sigma`` held constant in the backward pass and clipped to
``[1/r_max, r_max]`` and ``[-d_max, d_max]``; the limits start at BN's (1, 0)
and are relaxed step by step (``renorm_limits``). Unlike the paper we keep a
moving variance, not a moving sigma, so state and prediction are BN's.
"""

from __future__ import annotations

import mxnet as mx
from mxnet import autograd, init
from mxnet.gluon import nn

from ..fast import stop_gradient
from ..functional import batch_norm, channel_axes, check_batch_norm_args, moments, moving_average
from ..layers import BatchNormBase

# Paper schedule (Inception v3, 32 examples a step, ~130k steps): BN for 5k
# steps, then r_max reaches 3 at 40k and d_max 5 at 25k. Ours is one linear
# ramp for both, at about the same fractions of a short Fashion-MNIST run with
# small batches (batch 8: 7500 steps an epoch, so BN for 1000 steps and
# fully relaxed after 5000)
WARMUP_START, WARMUP_RAMP = 1000, 4000


def check_limits(r_max: float, d_max: float) -> None:
    """Raise ``ValueError`` unless ``r_max >= 1`` and ``d_max >= 0``."""
    # (written as `not >=` so that NaN is refused too)
    if not r_max >= 1:
        raise ValueError(f"r_max must be >= 1 (r is clipped to [1/r_max, r_max]), got {r_max}")
    if not d_max >= 0:
        raise ValueError(f"d_max must be >= 0 (d is clipped to [-d_max, d_max]), got {d_max}")


def batch_renorm(X, gamma, beta, moving_mean, moving_var, eps, momentum, r_max, d_max):
    """Batch-renormalise ``X`` per channel; return ``(Y, moving_mean, moving_var)``."""
    check_limits(r_max, d_max)
    check_batch_norm_args(X, gamma, beta, moving_mean, moving_var)
    if not autograd.is_training():
        # Prediction is BN's: the correction exists to make training look like it
        return batch_norm(X, gamma, beta, moving_mean, moving_var, eps, momentum)
    axes = channel_axes(X.ndim)
    mean, var = moments(X, axes)
    sigma_batch = mx.np.sqrt(var + eps)
    sigma = mx.np.sqrt(moving_var + eps)
    # Constants for the backward pass: the paper's point is that gradients do
    # not try to move the moving statistics, which only the averages below do
    r = stop_gradient(mx.np.clip(sigma_batch / sigma, 1.0 / r_max, r_max))
    d = stop_gradient(mx.np.clip((mean - moving_mean) / sigma, -d_max, d_max))
    X_hat = (X - mean) / sigma_batch * r + d
    moving_mean = moving_average(moving_mean, mean, momentum)
    moving_var = moving_average(moving_var, var, momentum)
    return gamma * X_hat + beta, moving_mean, moving_var


def renorm_limits(step: int, *, start: int = WARMUP_START, ramp: int = WARMUP_RAMP,
                  r_max: float = 3.0, d_max: float = 5.0) -> tuple[float, float]:
    """``(r_max, d_max)`` at ``step``: (1, 0) up to ``start``, then linear for ``ramp`` steps."""
    check_limits(r_max, d_max)
    if step < 0 or start < 0 or ramp < 0:
        raise ValueError(f"step, start and ramp must be >= 0, got {step}, {start}, {ramp}")
    if ramp == 0:
        t = 1.0 if step >= start else 0.0
    else:
        t = min(max((step - start) / ramp, 0.0), 1.0)
    return 1.0 + t * (r_max - 1.0), t * d_max


class BatchRenorm(BatchNormBase, nn.Block):
    """Batch renormalization layer: ``batch_renorm`` with BN's parameters and a step counter.

    The limits follow ``renorm_limits`` at the layer's own count of training-mode
    forward passes, kept in the Parameter ``num_steps`` (no gradient) so that
    ``save_parameters``/``load_parameters`` resume the schedule where it was and
    ``initialize(force_reinit=True)`` restarts it. Each context counts its own
    forward passes. Prediction mode is BN's and does not count.
    """

    repr_args = ("r_max", "d_max", "warmup_start", "warmup_ramp")

    # momentum 0.99 is the paper's update rate alpha = 0.01. Slower than the
    # book's 0.9 because the moving statistics now enter every training step
    # through r and d: averaged over ~100 batches, one small batch's noisy
    # statistics barely move them. (The paper calls it relatively fast: they
    # must still follow the statistics as the weights change.)
    def __init__(self, num_features: int, num_dims: int, eps: float = 1e-5,
                 momentum: float = 0.99, r_max: float = 3.0, d_max: float = 5.0,
                 warmup_start: int = WARMUP_START, warmup_ramp: int = WARMUP_RAMP, **kwargs):
        super().__init__(**kwargs)
        self.r_max, self.d_max = r_max, d_max
        self.warmup_start, self.warmup_ramp = warmup_start, warmup_ramp
        self.limits_at(0)  # checks the limits and the schedule before anything is built
        self._setup(num_features, num_dims, eps, momentum, "full")
        # float32 counts exactly up to 2**24 (16.7M) steps
        self.num_steps = self.params.get("num_steps", shape=(1,), init=init.Zero(),
                                         grad_req="null", differentiable=False)

    def limits_at(self, step: int) -> tuple[float, float]:
        """This layer's ``(r_max, d_max)`` at training ``step``."""
        return renorm_limits(step, start=self.warmup_start, ramp=self.warmup_ramp,
                             r_max=self.r_max, d_max=self.d_max)

    @property
    def step(self) -> int:
        """Training-mode forward passes so far (on the first context)."""
        return int(self.num_steps.data().item())

    def forward(self, X):
        self._check(X)
        ctx = X.ctx
        training = autograd.is_training()
        steps = self.num_steps.data(ctx)
        # item() waits for the device, once per layer and step: the price of a
        # count that is saved with the parameters. Prediction ignores the limits
        r_max, d_max = self.limits_at(int(steps.item())) if training else (self.r_max, self.d_max)
        # detach(): as in BatchNorm, the stored statistics stay outside the graph
        Y, moving_mean, moving_var = batch_renorm(
            X, self.gamma.data(ctx), self.beta.data(ctx), self.moving_mean.data(ctx).detach(),
            self.moving_var.data(ctx).detach(), eps=self.eps, momentum=self.momentum,
            r_max=r_max, d_max=d_max)
        if training:
            self._store(moving_mean, moving_var)
            with autograd.pause():
                steps += 1
        return Y
