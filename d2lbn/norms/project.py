"""Normalise, then project: onto a convex cone, or onto the functions a symmetry group fixes.

- ``cone_batch_norm``: BN, then each example's channel vector projected onto a
  closed convex cone: the non-negative orthant (that is, a ReLU) or the Lorentz
  cone ``{(t, x): |x| <= t}`` with channel 0 as ``t``.
- ``orbit_batch_norm``: BN with statistics per channel and position, averaged
  over each position's orbit under a group of the square's symmetries, so that
  turning one example turns its output and leaves the others'. (BN itself,
  averaging over all positions, has this property already.)
"""

from __future__ import annotations

import math

import mxnet as mx
import numpy as onp
from mxnet import autograd, init

from ..fast import FastBatchNorm
from ..functional import WIDE_DTYPES, batch_norm, check_batch_norm_args, moving_average
from ..layers import HybridBatchNorm
from .compact import bn_flops

CONES = ("orthant", "lorentz")
# Each group as its elements' (quarter turns, then a horizontal flip or not)
GROUPS = {
    "trivial": ((0, False),),
    "flip": ((0, False), (0, True)),
    "rot90": tuple((k, False) for k in range(4)),
    "d4": tuple((k, f) for f in (False, True) for k in range(4)),
}
# Float32's smallest normal is 1e-38: a length of 0 stays finite and exact
TINY = 1e-30


# -- projection onto a cone -------------------------------------------------------------------

def check_cone(cone: str) -> str:
    """Return ``cone`` unless it is not one of ``CONES`` (then ``ValueError``)."""
    if cone not in CONES:
        raise ValueError(f"cone must be one of {CONES}, got {cone!r}")
    return cone


def project_cone(Y, cone: str = "orthant"):
    """Project each channel vector of ``Y`` (per example and position) onto ``cone``."""
    check_cone(cone)
    if cone == "lorentz" and Y.shape[1] < 2:
        raise ValueError(f"the Lorentz cone needs at least 2 channels, got {Y.shape[1]}")
    return project_cone_graph(mx, Y, cone, Y.shape[1], Y.ndim, onp.dtype(Y.dtype).name)


def project_cone_graph(F, Y, cone: str, num_features: int, num_dims: int, dtype="float32"):
    """``project_cone`` for ``F`` = ``mx`` or ``mx.sym``, with sizes and dtype given."""
    if cone == "orthant":
        # The nearest point with no negative entry: clip each entry at 0, a ReLU
        return F.npx.relu(Y)
    # The Lorentz cone {(t, x): |x| <= t}: inside, y stays; in the polar cone
    # (|x| <= -t) it goes to 0; between, to the cone's nearest ray,
    # ((t + |x|) / 2) (1, x / |x|). One formula for all three: with
    # a = clip((t + |x|) / (2 |x|), 0, 1), the projection is (max(t, a |x|), a x).
    # t, |x| and a are computed once per example and position (one channel),
    # then copied to the C channels by a 1x1 map, so that the arithmetic on
    # full-size arrays is elementwise: broadcasting along the channels takes
    # MXNet's slow reduce in the backward pass (15x slower on LeNet's first
    # layer), and slicing the channels fails on oneDNN's blocked layouts
    C = num_features
    eye = F.np.eye(C, dtype=dtype)
    first = eye[0:1]                                                # e_0^T, (1, C)
    t = _mix(F, Y, first, C, 1, num_dims)
    x = _mix(F, Y, eye - eye * first, C, C, num_dims)               # channel 0 zeroed
    norm = F.np.sqrt(_mix(F, F.np.square(x), 1 - first, C, 1, num_dims) + TINY)
    u = (t + norm) / (2 * norm)
    a = F.npx.relu(u) - F.npx.relu(u - 1)                           # clip(u, 0, 1)
    return (_mix(F, a, F.np.ones((C, 1), dtype=dtype), 1, C, num_dims) * x
            + _mix(F, F.np.maximum(t, a * norm), first.T, 1, C, num_dims))


def _mix(F, Y, M, c_in, c_out, num_dims):
    """``M @ y`` for the channel vector ``y`` at each example and position; ``M``: (c_out, c_in)."""
    if num_dims == 2:
        return F.np.dot(Y, M.T)
    return F.npx.convolution(Y, M.reshape((c_out, c_in) + (1,) * (num_dims - 2)),
                             kernel=(1,) * (num_dims - 2), num_filter=c_out, no_bias=True)


def cone_batch_norm(X, gamma, beta, moving_mean, moving_var, eps, momentum, cone="orthant"):
    """``batch_norm``, then ``project_cone``; return ``(Y, moving_mean, moving_var)``."""
    check_cone(cone)
    Y, moving_mean, moving_var = batch_norm(X, gamma, beta, moving_mean, moving_var, eps,
                                            momentum)
    return project_cone(Y, cone), moving_mean, moving_var


class ConeBatchNorm(FastBatchNorm):
    """BN, then the projection onto a convex cone, as a Block.

    ``cone="orthant"``: the projection onto the non-negative orthant is
    ``max(y, 0)``, so this Block is exactly BN followed by a ReLU, written as
    the projection it is. ``cone="lorentz"``: onto ``{(t, x): |x| <= t}`` with
    channel 0 as ``t``, at each example and position.
    """

    repr_args = ("cone",)

    def __init__(self, num_features: int, num_dims: int, cone: str = "orthant",
                 eps: float = 1e-5, momentum: float = 0.9, **kwargs):
        super().__init__(num_features, num_dims, eps=eps, momentum=momentum, **kwargs)
        self.cone = check_cone(cone)
        if cone == "lorentz" and num_features < 2:
            raise ValueError(f"the Lorentz cone needs at least 2 channels, got {num_features}")

    def hybrid_forward(self, F, X, gamma, beta, moving_mean, moving_var):
        Y, moving_mean, moving_var = super().hybrid_forward(F, X, gamma, beta, moving_mean,
                                                            moving_var)
        return (project_cone_graph(F, Y, self.cone, self.num_features, self.num_dims,
                                   onp.dtype(self.gamma.dtype).name), moving_mean, moving_var)

    def flops(self, shape) -> int:
        """Leading-order FLOPs of a training-mode forward pass: BN's and the projection's."""
        return bn_flops(shape) + (1 if self.cone == "orthant" else 8) * math.prod(shape)


# -- statistics shared across a group's orbits ------------------------------------------------

def check_group(group: str, spatial) -> tuple:
    """The elements of ``group`` (``GROUPS``); ``ValueError`` if it cannot act on ``spatial``."""
    if group not in GROUPS:
        raise ValueError(f"group must be one of {sorted(GROUPS)}, got {group!r}")
    turns = any(k for k, _ in GROUPS[group])
    if turns and len(spatial) == 2 and spatial[0] != spatial[1]:
        raise ValueError(f"group {group!r} rotates by 90 degrees: it needs square maps, "
                         f"got {spatial[0]} x {spatial[1]}")
    return GROUPS[group]


def act(F, M, element):
    """The image of the ``(C, H, W)`` maps ``M`` under ``element`` = (quarter turns, flip)."""
    turns, flip = element
    for _ in range(turns):
        # A quarter turn counterclockwise, as onp.rot90(M, axes=(1, 2))
        M = F.np.flip(F.np.swapaxes(M, 1, 2), axis=1)
    return F.np.flip(M, axis=2) if flip else M


def symmetrize(F, M, group: str):
    """The average of ``M``'s images under ``group``: constant on each orbit of positions."""
    # (the orthogonal projection onto the maps that the group fixes)
    elements = GROUPS[group]
    if len(elements) == 1:
        return M
    return sum(act(F, M, g) for g in elements) / len(elements)


def orbit_batch_norm(X, gamma, beta, moving_mean, moving_var, eps, momentum, group="rot90"):
    """BN, statistics per position averaged over orbits; return ``(Y, moving_mean, moving_var)``.

    ``X`` is ``(N, C, H, W)`` (or ``(N, C)``, where there are no positions and this
    is BN); ``gamma`` and ``beta`` are per channel, ``(1, C, 1, 1)``; the moving
    statistics per channel and position, ``(1, C, H, W)``.
    """
    if X.ndim not in (2, 4):
        raise ValueError(f"orbit_batch_norm takes (N, C) or (N, C, H, W) input, got {X.shape}")
    check_group(group, X.shape[2:])
    check_batch_norm_args(X, gamma, beta)
    for name, a in (("moving_mean", moving_mean), ("moving_var", moving_var)):
        if a.shape != (1,) + X.shape[1:]:
            raise ValueError(f"{name} must have shape {(1,) + X.shape[1:]} (one value per "
                             f"channel and position), got {a.shape}")
    return orbit_batch_norm_graph(mx, X, gamma, beta, moving_mean, moving_var, eps, momentum,
                                  num_features=X.shape[1], spatial=tuple(X.shape[2:]),
                                  group=group, training=autograd.is_training())


def orbit_batch_norm_graph(F, X, gamma, beta, moving_mean, moving_var, eps, momentum,
                           num_features, spatial, group, training):
    """``orbit_batch_norm`` for ``F`` = ``mx`` or ``mx.sym``, with sizes and mode given."""
    C = num_features
    maps = (C,) + tuple(spatial) if spatial else (C, 1, 1)
    # (N, C * H * W): one column per channel and position, statistics over the
    # rows as products with a column of ones, whose backward is a product too
    flat = F.npx.reshape(X, (-2, -1))
    ones = F.np.ones_like(flat[:, 0:1])                              # (N, 1)
    if training:
        n = ones.sum()
        # The orbit average of the batch means is the mean of the batch with
        # all its images; centred on that (orbit-constant) mean, the same goes
        # for the variance
        mean = symmetrize(F, (F.np.dot(ones.T, flat) / n).reshape(maps), group)
        Xc = flat - F.np.dot(ones, mean.reshape(1, -1))
        var = symmetrize(F, (F.np.dot(ones.T, F.np.square(Xc)) / n).reshape(maps), group)
        moving_mean = moving_average(moving_mean, F.npx.reshape_like(mean, moving_mean),
                                     momentum)
        moving_var = moving_average(moving_var, F.npx.reshape_like(var, moving_var), momentum)
    else:
        mean, var = moving_mean.reshape(maps), moving_var.reshape(maps)
        Xc = flat - F.np.dot(ones, mean.reshape(1, -1))
    a = (gamma.reshape(C, 1, 1) / F.np.sqrt(var + eps)).reshape(1, -1)
    b = (F.np.zeros_like(var) + beta.reshape(C, 1, 1)).reshape(1, -1)
    Y = Xc * F.np.dot(ones, a) + F.np.dot(ones, b)
    return F.npx.reshape_like(Y, X), moving_mean, moving_var


class OrbitBatchNorm(HybridBatchNorm):
    """``orbit_batch_norm`` as a Block: moving statistics per channel and position.

    The positions are known at the first call, which fixes the moving
    statistics' shape ``(1, C, H, W)``; later input must have the same H and W.
    On ``(N, C)`` input it is BN.
    """

    dtypes = WIDE_DTYPES
    static_graph = True
    repr_args = ("group",)

    def __init__(self, num_features: int, num_dims: int, group: str = "rot90",
                 eps: float = 1e-5, momentum: float = 0.9, **kwargs):
        if num_dims not in (2, 4):
            raise ValueError(f"OrbitBatchNorm takes num_dims 2 or 4, got {num_dims!r}")
        check_group(group, ())
        super().__init__(num_features, num_dims, eps=eps, momentum=momentum, **kwargs)
        self.group = group

    def _add_moving_stats(self, shape) -> None:
        # One statistic per channel and position: H and W (0 here: unknown) are
        # filled in at the first call, by infer_shape
        shape = shape[:2] + (0, 0) if len(shape) == 4 else shape
        for name, start in (("moving_mean", init.Zero()), ("moving_var", init.One())):
            self._add_state(name, shape, start, allow_deferred_init=True)

    def infer_shape(self, X, *args) -> None:
        for param in (self.moving_mean, self.moving_var):
            param.shape = (1,) + tuple(X.shape[1:])

    def _check(self, X) -> None:
        super()._check(X)
        spatial = tuple(X.shape[2:])
        check_group(self.group, spatial)
        known = self.moving_mean.shape[2:]
        # (unknown sizes are -1 under MXNet's NumPy shape semantics)
        if spatial and min(known) > 0 and spatial != known:
            raise ValueError(f"{type(self).__name__} keeps statistics for {known[0]} x "
                             f"{known[1]} maps, got input of shape {X.shape}")

    def _trace_key(self, X) -> dict:
        return {**super()._trace_key(X), "spatial": tuple(X.shape[2:])}

    def hybrid_forward(self, F, X, gamma, beta, moving_mean, moving_var):
        return orbit_batch_norm_graph(F, X, gamma, beta, moving_mean, moving_var, self.eps,
                                      self.momentum, num_features=self.num_features,
                                      spatial=self._traced_spatial, group=self.group,
                                      training=self._traced_training)

    def flops(self, shape) -> int:
        """Leading-order FLOPs of a training-mode forward pass: BN's and the orbit averages."""
        return bn_flops(shape) + 4 * len(GROUPS[self.group]) * math.prod(shape[1:])


def group_images(X, group: str):
    """``X``'s images under each element of ``group``, as NumPy arrays (for checks and plots)."""
    X = onp.asarray(X)
    out = []
    for turns, flip in GROUPS[group]:
        Y = onp.rot90(X, turns, axes=(-2, -1))
        out.append(onp.flip(Y, axis=-1) if flip else Y)
    return out


__all__ = ["CONES", "ConeBatchNorm", "GROUPS", "OrbitBatchNorm", "act", "check_cone",
           "check_group", "cone_batch_norm", "group_images", "orbit_batch_norm",
           "orbit_batch_norm_graph", "project_cone", "project_cone_graph", "symmetrize"]
