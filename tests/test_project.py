"""Cone projections after BN, and BN with statistics shared across a symmetry group's orbits."""

import numpy as onp
import pytest
from helpers import (
    check_hybridized_equals_imperative,
    numpy_batch_norm,
    numpy_prediction,
    param_shape,
)
from mxnet import autograd, np, npx
from norm_refs import (
    EPS,
    MOMENTUM,
    TOL32,
    check_gradients,
    check_lenet_round_trip,
    correlated,
    initialized_lenet,
    recorded,
)

import d2lbn
from d2lbn.norms.project import (
    ConeBatchNorm,
    OrbitBatchNorm,
    cone_batch_norm,
    group_images,
    orbit_batch_norm,
    project_cone,
)

SHAPES = [(16, 6), (4, 6, 5, 5)]


def inputs(shape, seed=0):
    rng = onp.random.default_rng(seed)
    ps = param_shape(shape)
    return [correlated(shape, seed), rng.uniform(0.5, 2, size=ps), rng.normal(size=ps),
            rng.normal(size=ps), rng.uniform(0.5, 2, size=ps)], rng.normal(size=shape)


# -- cones ------------------------------------------------------------------------------------

def numpy_lorentz(v):
    """Projection of one vector (t, x) onto {|x| <= t}, case by case."""
    t, x = v[0], v[1:]
    r = onp.linalg.norm(x)
    if r <= t:
        return v.copy()
    if r <= -t:
        return onp.zeros_like(v)
    return (t + r) / 2 * onp.concatenate([[1.0], x / r])


def numpy_project(Y, cone):
    if cone == "orthant":
        return onp.maximum(Y, 0)
    Z = onp.moveaxis(Y, 1, -1)
    return onp.moveaxis(onp.apply_along_axis(numpy_lorentz, -1, Z), -1, 1)


def lorentz_points(shape, seed=2):
    """Points inside the cone, inside its polar, and in between, in about equal numbers."""
    rng = onp.random.default_rng(seed)
    Y = rng.normal(size=shape)
    norm = onp.linalg.norm(onp.delete(Y, 0, axis=1), axis=1)
    which = rng.integers(0, 3, size=norm.shape)
    Y[:, 0] = onp.choose(which, [norm * 1.5, -norm * 1.5, norm * rng.uniform(-0.9, 0.9,
                                                                              norm.shape)])
    return Y


@pytest.mark.parametrize("cone", ["orthant", "lorentz"])
@pytest.mark.parametrize("shape", SHAPES + [(50, 2)], ids=str)
def test_projection_matches_reference_and_is_a_projection(shape, cone):
    Y = lorentz_points(shape)
    P = project_cone(np.array(Y, dtype="float64"), cone).asnumpy()
    onp.testing.assert_allclose(P, numpy_project(Y, cone), rtol=1e-12, atol=1e-12)
    # in the cone, unchanged by a second projection
    onp.testing.assert_allclose(project_cone(np.array(P), cone).asnumpy(), P, atol=1e-12)
    # Moreau: the remainder lies in the polar cone, -K for these self-dual cones,
    # and is orthogonal to the projection
    R = Y - P
    onp.testing.assert_allclose(numpy_project(-R, cone), -R, atol=1e-12)
    onp.testing.assert_allclose((R * P).sum(axis=1), 0, atol=1e-12)
    # No point of the cone is nearer than the projection
    rng = onp.random.default_rng(9)
    for _ in range(5):
        Q = numpy_project(P + rng.normal(scale=0.3, size=shape), cone)
        assert (((Y - Q) ** 2).sum(axis=1) >= ((Y - P) ** 2).sum(axis=1) - 1e-12).all()


@pytest.mark.parametrize("training", [True, False], ids=["training", "prediction"])
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_orthant_is_batch_norm_then_relu(shape, training):
    """The orthant projection after BN is MXNet's own BN followed by its ReLU."""
    (X, gamma, beta, mm, mv), head = inputs(shape)
    arrays = [np.array(a, dtype="float32") for a in (X, gamma, beta, mm, mv)]
    got = recorded(lambda *a: cone_batch_norm(*a, EPS, MOMENTUM, cone="orthant"), arrays,
                   np.array(head, dtype="float32"), training=training)
    want = recorded(lambda X, g, b, m, v: [npx.relu(npx.batch_norm(
        X, g.reshape(-1), b.reshape(-1), m.reshape(-1), v.reshape(-1), eps=EPS,
        fix_gamma=False, use_global_stats=not training, axis=1))], arrays,
        np.array(head, dtype="float32"), training=training)
    for name, g, w in zip(["Y", "dX", "dgamma", "dbeta"], got, want):
        onp.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-4, err_msg=name)
    # and the closed form: BN's backward with the gradient stopped where Y < 0
    if training:
        Y, *_ = numpy_batch_norm(X, gamma, beta, mm, mv, head)
        _, dX, dgamma, dbeta, _, _ = numpy_batch_norm(X, gamma, beta, mm, mv, head * (Y > 0))
        for name, g, w in zip(["Y", "dX", "dgamma", "dbeta"], got,
                              [onp.maximum(Y, 0), dX, dgamma, dbeta]):
            onp.testing.assert_allclose(g, w, **TOL32, err_msg=name)


@pytest.mark.parametrize("training", [True, False], ids=["training", "prediction"])
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_lorentz_batch_norm_matches_reference(shape, training):
    (X, gamma, beta, mm, mv), _ = inputs(shape)
    with autograd.train_mode() if training else autograd.predict_mode():
        Y, new_mm, new_mv = cone_batch_norm(*[np.array(a, dtype="float32")
                                              for a in (X, gamma, beta, mm, mv)],
                                            EPS, MOMENTUM, cone="lorentz")
    if training:
        Z, _, _, _, want_mm, want_mv = numpy_batch_norm(X, gamma, beta, mm, mv, X)
    else:
        Z, want_mm, want_mv = numpy_prediction(X, gamma, beta, mm, mv), mm, mv
    for name, g, w in zip(["Y", "moving_mean", "moving_var"], [Y, new_mm, new_mv],
                          [numpy_project(Z, "lorentz"), want_mm, want_mv]):
        onp.testing.assert_allclose(g.asnumpy(), w, **TOL32, err_msg=name)


@pytest.mark.parametrize("shape", [(6, 3), (2, 3, 2, 2)], ids=str)
def test_lorentz_gradients_by_finite_differences(shape):
    (X, gamma, beta, mm, mv), head = inputs(shape, seed=4)
    fn = lambda *a: cone_batch_norm(*a, np.array(mm), np.array(mv), EPS, MOMENTUM,  # noqa: E731
                                    cone="lorentz")
    check_gradients(fn, X, gamma, beta, head)


def test_cone_checks():
    with pytest.raises(ValueError, match="cone must be one of"):
        ConeBatchNorm(4, 2, cone="simplex")
    with pytest.raises(ValueError, match="at least 2 channels"):
        ConeBatchNorm(1, 2, cone="lorentz")
    assert repr(ConeBatchNorm(4, 4)) == ("ConeBatchNorm(4, num_dims=4, cone='orthant', "
                                         "eps=1e-05, momentum=0.9)")


# -- orbits -----------------------------------------------------------------------------------

def numpy_orbit(X, gamma, beta, mm, mv, group, training=True):
    """Float64: per-position statistics of the batch augmented by its images under ``group``."""
    if training:
        augmented = onp.concatenate(group_images(X, group)) if X.ndim == 4 else X
        mean = augmented.mean(axis=0, keepdims=True)
        var = augmented.var(axis=0, keepdims=True)
        mm, mv = MOMENTUM * mm + (1 - MOMENTUM) * mean, MOMENTUM * mv + (1 - MOMENTUM) * var
    else:
        mean, var = mm, mv
    return gamma * (X - mean) / onp.sqrt(var + EPS) + beta, mm, mv


def orbit_inputs(shape, seed=0):
    rng = onp.random.default_rng(seed)
    ps, ms = param_shape(shape), (1,) + shape[1:]
    # A bright corner, so that per-position statistics differ across positions
    X = correlated(shape, seed)
    if len(shape) == 4:
        X[:, :, :2, :2] += 3
    return [X, rng.uniform(0.5, 2, size=ps), rng.normal(size=ps), rng.normal(size=ms),
            rng.uniform(0.5, 2, size=ms)], rng.normal(size=shape)


def run_orbit(arrays, group, training, dtype="float32"):
    with autograd.train_mode() if training else autograd.predict_mode():
        return [a.asnumpy() for a in orbit_batch_norm(
            *[np.array(a, dtype=dtype) for a in arrays], EPS, MOMENTUM, group=group)]


@pytest.mark.parametrize("training", [True, False], ids=["training", "prediction"])
@pytest.mark.parametrize("group", ["rot90", "flip", "d4", "trivial"])
@pytest.mark.parametrize("shape", [(4, 3, 5, 5), (8, 2, 6, 6), (16, 3)], ids=str)
def test_orbit_matches_augmented_batch(shape, group, training):
    arrays, _ = orbit_inputs(shape)
    got = run_orbit(arrays, group, training)
    for name, g, w in zip(["Y", "moving_mean", "moving_var"], got,
                          numpy_orbit(*arrays, group, training=training)):
        onp.testing.assert_allclose(g, w, **TOL32, err_msg=name)


def act_on_first(X, image):
    """``X`` with its first example replaced by ``image``."""
    X = X.copy()
    X[0] = image
    return X


@pytest.mark.parametrize("group", ["rot90", "flip", "d4"])
def test_orbit_norm_is_invariant_to_each_example_s_symmetries(group):
    arrays, _ = orbit_inputs((6, 3, 6, 6))
    X, rest = arrays[0], arrays[1:3]
    ones, zeros = onp.ones((1, 3, 6, 6)), onp.zeros((1, 3, 6, 6))
    Y, mm, mv = run_orbit([X] + rest + [zeros, ones], group, True, dtype="float64")
    Yp = run_orbit([X] + rest + [mm, mv], group, False, dtype="float64")[0]
    assert onp.ptp(mm) > 0.5  # the statistics do depend on the position
    for gx, gy, gyp in zip(*[group_images(A[0], group) for A in (X, Y, Yp)]):
        # Training, one example turned: the batch's orbit is the same set, so are
        # the statistics; that example's output turns with it, the others stay
        got, gmm, gmv = run_orbit([act_on_first(X, gx)] + rest + [zeros, ones], group, True,
                                  dtype="float64")
        onp.testing.assert_allclose(got, act_on_first(Y, gy), atol=1e-12)
        onp.testing.assert_allclose(gmm, mm, atol=1e-12)
        onp.testing.assert_allclose(gmv, mv, atol=1e-12)
        # Prediction with the moving statistics, which are symmetric
        got = run_orbit([act_on_first(X, gx)] + rest + [mm, mv], group, False,
                        dtype="float64")[0]
        onp.testing.assert_allclose(got, act_on_first(Yp, gyp), atol=1e-12)


def test_per_position_bn_without_orbit_is_not():
    arrays, _ = orbit_inputs((6, 3, 6, 6))
    X, rest = arrays[0], arrays[1:3]
    ones, zeros = onp.ones((1, 3, 6, 6)), onp.zeros((1, 3, 6, 6))
    Y, mm, mv = run_orbit([X] + rest + [zeros, ones], "trivial", True, dtype="float64")
    turned = onp.rot90(X[0], 1, axes=(1, 2))
    got, gmm, _ = run_orbit([act_on_first(X, turned)] + rest + [zeros, ones], "trivial", True,
                            dtype="float64")
    assert onp.abs(gmm - mm).max() > 0.05
    assert onp.abs(got[0] - onp.rot90(Y[0], 1, axes=(1, 2))).max() > 0.5
    Yp = run_orbit([X] + rest + [mm, mv], "trivial", False, dtype="float64")[0]
    got = run_orbit([act_on_first(X, turned)] + rest + [mm, mv], "trivial", False,
                    dtype="float64")[0]
    assert onp.abs(got[0] - onp.rot90(Yp[0], 1, axes=(1, 2))).max() > 0.5
    # Turning the whole batch turns per-position statistics too: that much any
    # per-position BN has, orbit or not
    got = run_orbit([onp.rot90(X, 1, axes=(2, 3)).copy()] + rest + [zeros, ones], "trivial",
                    True, dtype="float64")[0]
    onp.testing.assert_allclose(got, onp.rot90(Y, 1, axes=(2, 3)), atol=1e-12)


def test_bn_statistics_already_ignore_the_orbit():
    """Per channel over all positions, the augmented batch has BN's statistics: nothing to gain."""
    X = np.array(orbit_inputs((4, 3, 5, 5))[0][0], dtype="float64")
    aug = np.array(onp.concatenate(group_images(X.asnumpy(), "d4")), dtype="float64")
    p = [np.ones((1, 3, 1, 1), dtype="float64"), np.zeros((1, 3, 1, 1), dtype="float64")]
    with autograd.train_mode():
        Y, mm, mv = d2lbn.batch_norm(X, *p, *p[::-1], EPS, MOMENTUM)
        Ya, mma, mva = d2lbn.batch_norm(aug, *p, *p[::-1], EPS, MOMENTUM)
    onp.testing.assert_allclose(mma.asnumpy(), mm.asnumpy(), atol=1e-12)
    onp.testing.assert_allclose(mva.asnumpy(), mv.asnumpy(), atol=1e-12)
    onp.testing.assert_allclose(Ya.asnumpy()[:4], Y.asnumpy(), atol=1e-12)


@pytest.mark.parametrize("shape, group", [((3, 2, 3, 3), "rot90"), ((3, 2, 2, 2), "d4"),
                                          ((6, 3), "rot90")], ids=str)
def test_orbit_gradients_by_finite_differences(shape, group):
    arrays, head = orbit_inputs(shape, seed=5)
    X, gamma, beta, mm, mv = arrays
    fn = lambda *a: orbit_batch_norm(*a, np.array(mm), np.array(mv), EPS, MOMENTUM,  # noqa: E731
                                     group=group)
    check_gradients(fn, X, gamma, beta, head)


def test_orbit_checks():
    p = np.ones((1, 2, 1, 1))
    with pytest.raises(ValueError, match="square maps"):
        orbit_batch_norm(np.ones((2, 2, 3, 4)), p, p, np.ones((1, 2, 3, 4)),
                         np.ones((1, 2, 3, 4)), EPS, MOMENTUM)
    with pytest.raises(ValueError, match="one value per channel and position"):
        orbit_batch_norm(np.ones((2, 2, 3, 3)), p, p, p, p, EPS, MOMENTUM)
    with pytest.raises(ValueError, match="group must be one of"):
        OrbitBatchNorm(2, 4, group="rot45")
    layer = OrbitBatchNorm(2, 4)
    layer.initialize()
    layer(np.ones((2, 2, 3, 3)))
    assert layer.moving_mean.shape == layer.moving_var.shape == (1, 2, 3, 3)
    with pytest.raises(ValueError, match="keeps statistics for 3 x 3 maps"):
        layer(np.ones((2, 2, 4, 4)))
    flip = OrbitBatchNorm(2, 4, group="flip")  # needs no square
    flip.initialize()
    assert flip(np.ones((2, 2, 3, 4))).shape == (2, 2, 3, 4)


def test_orbit_block_state():
    layer = OrbitBatchNorm(3, 4, group="d4")
    layer.initialize()
    assert repr(layer) == "OrbitBatchNorm(3, num_dims=4, group='d4', eps=1e-05, momentum=0.9)"
    arrays, _ = orbit_inputs((4, 3, 5, 5))
    X = np.array(arrays[0], dtype="float32")
    with autograd.record():
        layer(X)
    ones, zeros = onp.ones((1, 3, 1, 1)), onp.zeros((1, 3, 1, 1))
    start = [onp.zeros((1, 3, 5, 5)), onp.ones((1, 3, 5, 5))]
    _, mm, mv = numpy_orbit(arrays[0], ones, zeros, *start, "d4")
    onp.testing.assert_allclose(layer.moving_mean.data().asnumpy(), mm, **TOL32)
    onp.testing.assert_allclose(layer.moving_var.data().asnumpy(), mv, **TOL32)
    assert layer.moving_mean.grad_req == layer.moving_var.grad_req == "null"
    Y = layer(X).asnumpy()
    onp.testing.assert_allclose(Y, numpy_orbit(arrays[0], ones, zeros, mm, mv, "d4",
                                               training=False)[0], **TOL32)


# -- the Blocks in nets -----------------------------------------------------------------------

MAKERS = {"orthant": lambda c, d: ConeBatchNorm(c, d),
          "lorentz": lambda c, d: ConeBatchNorm(c, d, cone="lorentz"),
          "orbit": lambda c, d: OrbitBatchNorm(c, d)}


@pytest.mark.parametrize("name", MAKERS)
@pytest.mark.parametrize("shape", [(10, 4), (6, 4, 5, 5)], ids=str)
def test_hybridized_equals_imperative(shape, name):
    check_hybridized_equals_imperative(MAKERS[name], MAKERS[name], shape, tol=1e-5)


@pytest.mark.parametrize("name", MAKERS)
def test_lenet_trains_and_round_trips(tmp_path, name):
    check_lenet_round_trip(initialized_lenet(MAKERS[name]), MAKERS[name], tmp_path)
