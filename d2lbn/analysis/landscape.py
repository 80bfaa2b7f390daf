"""The measurements of Santurkar et al. (2018), "How does batch normalization help optimization?".

Layer input statistics (``layer_input_stats``), gradient-based internal covariate
shift (``gradient_ics``) and the loss landscape along ``-g`` (``loss_landscape``),
at one SGD step on a batch, in training mode. The measuring functions restore
every array of ``net.collect_params()`` afterwards, so a run with measurements
trains exactly as one without. Nets: one device, ``grad_req='write'``, no Dropout
(each pass would draw other masks).
"""

from __future__ import annotations

import contextlib

import numpy as onp
from mxnet import autograd, gluon
from mxnet.gluon.parameter import DeferredInitializationError

from .. import train

# Step sizes along -g, as multiples of the learning rate (the paper spans about
# one order of magnitude around the step SGD takes)
DEFAULT_SCALES = (0.5, 1.0, 2.0, 4.0)


# -- the math: NumPy in, floats out ------------------------------------------------------------

def feature_stats(H) -> tuple[float, float]:
    """Mean and standard deviation of each feature (axis 1) of ``H``, averaged over features."""
    H = onp.asarray(H, dtype=onp.float64)
    # Per feature, as BN standardises: over the batch and any spatial axes.
    # The averaged mean equals the overall mean; the averaged sd leaves out the
    # spread between the features' means, which is not a drift of any one feature
    axes = (0,) + tuple(range(2, H.ndim))
    return float(H.mean(axis=axes).mean()), float(H.std(axis=axes).mean())


def gradient_change(G, G2) -> tuple[float, float]:
    """``||G - G2||_2`` and ``cos(G, G2)`` (NaN when either is zero) of two flat gradients."""
    G, G2 = onp.asarray(G, dtype=onp.float64), onp.asarray(G2, dtype=onp.float64)
    norms = onp.linalg.norm(G) * onp.linalg.norm(G2)
    cos = float(G @ G2 / norms) if norms > 0 else float("nan")
    return float(onp.linalg.norm(G - G2)), cos


def summarize_landscape(etas, losses, grad_changes, loss0: float, grad_norm: float) -> dict:
    """Loss variation, gradient predictiveness and effective beta-smoothness along ``-g``."""
    etas, losses = onp.asarray(etas, float), onp.asarray(losses, float)
    grad_changes = onp.asarray(grad_changes, float)
    # ||eta g|| is how far each step moved: the smoothness is gradient change per distance
    beta = float((grad_changes / (etas * grad_norm)).max()) if grad_norm > 0 else 0.0
    return {"eta": etas.tolist(), "loss": losses.tolist(), "grad_change": grad_changes.tolist(),
            "loss0": float(loss0), "grad_norm": float(grad_norm),
            "loss_min": float(losses.min()), "loss_max": float(losses.max()),
            "loss_range": float(losses.max() - losses.min()),
            "grad_change_min": float(grad_changes.min()),
            "grad_change_max": float(grad_changes.max()), "beta": beta}


# -- bookkeeping: parameters, gradients, passes ------------------------------------------------

def _trainable(params) -> list:
    return [p for p in params if p.grad_req != "null"]


def _layer_params(layer) -> list:
    return list(layer.collect_params().values())


def _position(net, layer_index: int) -> int:
    n = len(net)
    if not -n <= layer_index < n:
        raise IndexError(f"layer_index {layer_index} out of range for a net of {n} layers")
    return layer_index % n


@contextlib.contextmanager
def preserved(net, X):
    """Run the block, then put back every parameter and gradient array of ``net`` bit for bit."""
    params = list(net.collect_params().values())
    try:
        arrays = [a for p in params for a in p.list_data()]
    except DeferredInitializationError:
        # Shapes come with the first forward; prediction mode moves no statistics
        with autograd.predict_mode():
            net(X)
        arrays = [a for p in params for a in p.list_data()]
    arrays += [g for p in _trainable(params) for g in p.list_grad()]
    saved = [a.copy() for a in arrays]
    try:
        yield
    finally:
        with autograd.pause():
            for a, s in zip(arrays, saved):
                s.copyto(a)


def _forward_backward(net, loss, X, y) -> float:
    # As sgd_step: recorded (training mode), gradients of the summed loss
    with autograd.record():
        l = loss(net(X), y)
    l.backward()
    return float(l.mean())


def _flat_grad(params, ctx, n: int):
    return onp.concatenate([p.grad(ctx).asnumpy().astype(onp.float64).ravel()
                            for p in params]) / n


def layer_input_stats(net, X, layer_index: int) -> tuple[float, float]:
    """``feature_stats`` of the input to ``net[layer_index]`` in prediction mode on ``X``."""
    h = X
    with autograd.predict_mode():
        for layer in list(net)[:_position(net, layer_index)]:
            h = layer(h)
    return feature_stats(h.asnumpy())


def gradient_ics(net, loss, X, y, lr: float, layer_index: int) -> tuple[float, float]:
    """``||G - G'||_2`` and ``cos(G, G')`` for the parameters of ``net[layer_index]``.

    ``G`` is their gradient at the current point; ``G'`` the same after every
    layer before it has taken its SGD step ``w -= lr * grad`` (gradients at the
    current point, same batch), itself and later layers unchanged. ``net`` is
    restored.
    """
    layers = list(net)
    i = _position(net, layer_index)
    target = _trainable(_layer_params(layers[i]))
    if not target:
        raise ValueError(f"net[{layer_index}] ({type(layers[i]).__name__}) has no trainable "
                         "parameters")
    earlier = _trainable([p for layer in layers[:i] for p in _layer_params(layer)])
    ctx, n = X.ctx, X.shape[0]
    with preserved(net, X):
        _forward_backward(net, loss, X, y)
        G = _flat_grad(target, ctx, n)
        with autograd.pause():
            for p in earlier:
                (p.data(ctx) - (lr / n) * p.grad(ctx)).copyto(p.data(ctx))
        _forward_backward(net, loss, X, y)
        G2 = _flat_grad(target, ctx, n)
    return gradient_change(G, G2)


def loss_landscape(net, loss, X, y, lr: float, scales=DEFAULT_SCALES) -> dict:
    """Loss and gradient at ``w - eta g`` for each step size ``eta = lr * scale``, summarised.

    ``g`` is the full gradient at the current point ``w``. Returns the etas,
    losses and ``||grad L(w) - grad L(w - eta g)||`` per eta, ``L(w)`` as
    ``loss0``, ``||g||``, the losses' min, max and range (the loss variation),
    the gradient changes' min and max (gradient predictiveness) and ``beta``,
    the largest gradient change per distance ``||eta g||``. ``net`` is restored.
    """
    if not scales or min(scales) <= 0:
        raise ValueError(f"scales must be positive multiples of lr, got {scales!r}")
    params = _trainable(net.collect_params().values())
    ctx, n = X.ctx, X.shape[0]
    etas = [lr * s for s in scales]
    losses, changes = [], []
    with preserved(net, X):
        loss0 = _forward_backward(net, loss, X, y)
        w = [p.data(ctx).copy() for p in params]
        g = [p.grad(ctx) / n for p in params]
        g_flat = _flat_grad(params, ctx, n)
        for eta in etas:
            with autograd.pause():
                for p, w0, g0 in zip(params, w, g):
                    (w0 - eta * g0).copyto(p.data(ctx))
            losses.append(_forward_backward(net, loss, X, y))
            changes.append(onp.linalg.norm(g_flat - _flat_grad(params, ctx, n)))
    return summarize_landscape(etas, losses, changes, loss0, onp.linalg.norm(g_flat))


TRACKED = ("step", "loss", "input_mean", "input_std", "ics_l2", "ics_cos", "loss_min",
           "loss_max", "loss_range", "grad_change_min", "grad_change_max", "beta", "grad_norm")


def track(net, train_iter, num_steps: int, lr: float, every: int, layer_index: int, probe,
          scales=DEFAULT_SCALES, device=None, quiet: bool = False) -> dict[str, list]:
    """Train an initialised ``net`` with SGD for ``num_steps`` steps, measuring every ``every``.

    A record at step ``s`` (SGD steps taken so far: 0, every, 2 every, ...) is
    taken before that step, on its batch: the batch's loss, ``layer_input_stats``
    on the fixed batch ``probe``, ``gradient_ics`` and the ``loss_landscape``
    summary. Returns ``TRACKED`` as keys, each a list of plain numbers, one per record.
    Prints one line per record unless ``quiet``.
    """
    if lr <= 0:
        raise ValueError(f"lr must be positive, got {lr}")
    if num_steps < 1 or every < 1:
        raise ValueError(f"num_steps and every must be at least 1, got {num_steps}, {every}")
    device = device or train.try_gpu()
    probe = probe.as_in_ctx(device)
    trainer = gluon.Trainer(net.collect_params(), "sgd", {"learning_rate": lr})
    loss = gluon.loss.SoftmaxCrossEntropyLoss()
    record = {key: [] for key in TRACKED}
    for step, (X, y) in enumerate(train.step_batches(train_iter, num_steps, device)):
        if step % every == 0:
            _record(record, step, net, loss, X, y, lr, layer_index, probe, scales)
            if not quiet:
                _print_record(record, num_steps)
        train.sgd_step(net, trainer, loss, X, y)
    return record


def _record(record, step, net, loss, X, y, lr, layer_index, probe, scales) -> None:
    mean, std = layer_input_stats(net, probe, layer_index)
    ics_l2, ics_cos = gradient_ics(net, loss, X, y, lr, layer_index)
    land = loss_landscape(net, loss, X, y, lr, scales)
    values = {"step": step, "loss": land["loss0"], "input_mean": mean, "input_std": std,
              "ics_l2": ics_l2, "ics_cos": ics_cos}
    values.update({key: land[key] for key in TRACKED if key not in values})
    for key in TRACKED:
        record[key].append(values[key])


def _print_record(record, num_steps: int) -> None:
    r = {key: values[-1] for key, values in record.items()}
    print(f"step {r['step']}/{num_steps}: loss {r['loss']:.3f}, input mean {r['input_mean']:.3f} "
          f"sd {r['input_std']:.3f}, ICS {r['ics_l2']:.3g} (cos {r['ics_cos']:.3f}), "
          f"loss range {r['loss_range']:.3g}, grad change <= {r['grad_change_max']:.3g}, "
          f"beta {r['beta']:.3g}", flush=True)
