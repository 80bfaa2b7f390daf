"""The C++ batch norm: the chapter's and MXNet's checks, inside graphs, bad input, the build.

Tolerances: against MXNet's operator, ``TOL`` (1e-4) as for the other versions,
since the operator sums in float32 (errors near 1e-5 of the largest value on
these shapes); against float64 NumPy, ``DTYPE_TOL``: a few roundings of the
dtype, which this version meets as its sums run in double.
"""

import os
import subprocess
import sys
import textwrap

import mxnet as mx
import numpy as onp
import pytest
from helpers import (
    NAMES,
    TOL,
    assert_close_in,
    batch,
    check_hybridized_equals_imperative,
    check_refused,
    float64,
    numpy_batch_norm,
    numpy_prediction,
    ours,
    param_shape,
    parameter_bytes,
    random_inputs,
    step,
)
from mxnet import autograd, gluon, np
from mxnet.gluon import nn
from test_functional import SHAPES, reference
from test_functional import test_training_matches_mxnet_operator as _matches_operator
from test_layers import BAD_INPUT
from test_layers import test_bad_input as _bad_input
from test_layers import test_block_matches_gluon_batchnorm as _matches_gluon_block
from test_layers import test_each_device_keeps_its_own_statistics as _own_statistics
from test_layers import test_save_load_round_trip as _save_load

from d2lbn import models
from d2lbn.fast import CompiledBatchNorm, FastBatchNorm, batch_norm_cpp, compiled

# -- the function: d2lbn.batch_norm's contract -------------------------------------------------

@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_training_matches_mxnet_operator(shape):
    _matches_operator(shape, batch_norm_cpp)


@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_prediction_matches_global_stats(shape):
    inputs = random_inputs(shape)
    got = ours(*inputs, training=False, fn=batch_norm_cpp)
    want = reference(*inputs, training=False)
    onp.testing.assert_array_equal(got[4].asnumpy(), inputs[3].asnumpy())  # untouched
    for name, g, w in zip(NAMES, got, want):
        onp.testing.assert_allclose(g.asnumpy(), w.asnumpy(), **TOL, err_msg=name)


# 2-D input is summed 16 channels at a time, then the channels left over: these
# shapes take one block, blocks and a remainder, and blocks only
BLOCKS = [(9, 16), (7, 37), (3, 48)]


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("shape", SHAPES + BLOCKS, ids=str)
def test_float64_numpy_reference(shape, dtype):
    inputs = [a.astype(dtype) for a in random_inputs(shape)]
    assert_close_in(dtype, ours(*inputs, fn=batch_norm_cpp), numpy_batch_norm(*float64(inputs)))
    Y = ours(*inputs, training=False, fn=batch_norm_cpp)[0]
    assert_close_in(dtype, [Y], [numpy_prediction(*float64(inputs[:5]))])


def test_float16_is_refused():
    inputs = [a.astype("float16") for a in random_inputs((4, 3, 2, 2))]
    with pytest.raises(ValueError, match="float32 or float64, not float16"):
        ours(*inputs, fn=batch_norm_cpp)


def test_large_mean_stays_within_float32_rounding():
    # X = 1000 + N(0, 1): the sums run in double around each channel's first
    # value, so every result stays within DTYPE_TOL of float64, where the
    # built-in operator (float32 sums) is off by more
    rng = onp.random.default_rng(3)
    shape = (64, 3, 12, 12)
    ps = param_shape(shape)
    inputs = [np.array(a, dtype="float32") for a in (
        1000 + rng.normal(size=shape), rng.uniform(0.5, 2, size=ps), rng.normal(size=ps),
        onp.zeros(ps), onp.ones(ps), rng.normal(size=shape))]
    want = numpy_batch_norm(*float64(inputs))
    assert_close_in("float32", ours(*inputs, fn=batch_norm_cpp), want)
    with pytest.raises(AssertionError):
        assert_close_in("float32", reference(*inputs), want)


# -- the Block ---------------------------------------------------------------------------------

@pytest.mark.parametrize("shape", [(8, 5), (6, 4, 7), (4, 3, 5, 6), (3, 2, 3, 4, 5)], ids=str)
def test_block_matches_gluon_batchnorm(shape):
    _matches_gluon_block(shape, CompiledBatchNorm)


@pytest.mark.parametrize("shape", [(6, 4, 5, 5), (10, 7)], ids=str)
def test_hybridized_equals_imperative(shape):
    check_hybridized_equals_imperative(CompiledBatchNorm, CompiledBatchNorm, shape)


def test_bad_input():
    _bad_input(CompiledBatchNorm)


def test_each_device_keeps_its_own_statistics():
    _own_statistics(CompiledBatchNorm)


def test_save_load_round_trip(tmp_path):
    _save_load(tmp_path, "cpp")


def test_initial_state_and_repr():
    bn = CompiledBatchNorm(3, num_dims=4)
    bn.initialize()
    for p, value in [(bn.gamma, 1), (bn.beta, 0), (bn.moving_mean, 0), (bn.moving_var, 1)]:
        assert p.shape == (1, 3, 1, 1)
        onp.testing.assert_array_equal(p.data().asnumpy(), value)
    assert (bn.eps, bn.momentum, bn.moving_var.grad_req) == (1e-5, 0.9, "null")
    assert repr(bn) == "CompiledBatchNorm(3, num_dims=4, eps=1e-05, momentum=0.9)"


@pytest.mark.parametrize("hybridize", [False, True], ids=["imperative", "hybridized"])
@pytest.mark.parametrize("dtype", ["float16", "float32", "float64"])
def test_each_dtype_is_honoured_or_refused(dtype, hybridize):
    bn = CompiledBatchNorm(3, num_dims=4)
    bn.initialize()
    bn.cast(dtype)
    if hybridize:
        bn.hybridize()
    shape = (4, 3, 5, 6)
    X, head = batch(shape, 1).astype(dtype), batch(shape, 2).astype(dtype)
    if dtype == "float16":
        check_refused(bn, X, "float32 or float64, not float16")
        return
    one, zero = onp.ones((1, 3, 1, 1)), onp.zeros((1, 3, 1, 1))
    Y, dgamma, dbeta = step(bn, X, head)
    want = numpy_batch_norm(*float64([X]), one, zero, zero, one, *float64([head]))
    assert_close_in(dtype, [Y, dgamma, dbeta, bn.moving_mean.data(), bn.moving_var.data()],
                    [want[i] for i in (0, 2, 3, 4, 5)])
    stats = float64([bn.moving_mean.data(), bn.moving_var.data()])
    assert_close_in(dtype, [bn(X)], [numpy_prediction(*float64([X]), one, zero, *stats)])


@pytest.mark.parametrize("training", [True, False], ids=["training", "prediction"])
@pytest.mark.parametrize("case", BAD_INPUT)
@pytest.mark.parametrize("hybridize", [False, True], ids=["imperative", "hybridized"])
def test_bad_input_leaves_the_layer_as_it_was(hybridize, case, training):
    bn = CompiledBatchNorm(3, num_dims=4)
    bn.initialize()
    if hybridize:
        bn.hybridize()
    X = batch((4, 3, 4, 4))
    step(bn, X, np.ones_like(X))
    make, match = BAD_INPUT[case]
    check_refused(bn, make(), match, training=training)
    before = parameter_bytes(bn)
    step(bn, X + 1, np.ones_like(X))
    assert parameter_bytes(bn) != before  # (the comparison would see a change)


@pytest.mark.parametrize("where", ["block", "block after a step", "net"])
def test_grad_req_add_is_refused(where):
    net = CompiledBatchNorm(3, num_dims=2)
    if where == "net":  # (refused when the parent's graph is traced)
        net = nn.HybridSequential()
        net.add(nn.Dense(3), CompiledBatchNorm(3, num_dims=2))
        net.hybridize()
    net.initialize()
    if where == "block after a step":  # the layer checks each input once: not this change
        step_net(net, batch((4, 3)))
    net.collect_params().setattr("grad_req", "add")
    with pytest.raises(ValueError, match="grad_req='add'"):
        step_net(net, batch((4, 3)))


def step_net(net, X):
    """One recorded forward and backward of ``net`` on ``X``; return the output."""
    with autograd.record():
        Y = net(X)
    Y.backward()
    return Y


def test_frozen_gamma_and_beta():
    # grad_req='null' leaves the operator no buffers for them; X's gradient still flows
    bn, ref = CompiledBatchNorm(3, num_dims=4), nn.BatchNorm(in_channels=3)
    for layer in (bn, ref):
        layer.initialize()
        layer.gamma.grad_req = layer.beta.grad_req = "null"
    X, head = batch((4, 3, 5, 5)), batch((4, 3, 5, 5), 1)
    grads = []
    for layer in (bn, ref):
        Xc = X.copy()
        Xc.attach_grad()
        with autograd.record():
            Y = layer(Xc)
        Y.backward(head)
        grads.append(Xc.grad.asnumpy())
    onp.testing.assert_allclose(*grads, **TOL)


# -- inside a hybridized HybridSequential ----------------------------------------------------

def conv_bn_net(norm):
    """conv 8 > BN > sigmoid > dense 10, weights from a fixed seed."""
    net = nn.HybridSequential()
    # (sizes given: the weights are drawn at initialize(), right after the seed)
    net.add(nn.Conv2D(8, kernel_size=3, in_channels=1), norm, nn.Activation("sigmoid"),
            nn.Dense(10, in_units=8 * 8 * 8))
    mx.random.seed(7)
    net.initialize(mx.init.Xavier())
    net.hybridize()
    return net


def test_inside_hybrid_sequential_matches_gluon():
    ours_net = conv_bn_net(CompiledBatchNorm(8, num_dims=4))
    ref_net = conv_bn_net(nn.BatchNorm(in_channels=8))
    trainers = [gluon.Trainer(n.collect_params(), "sgd", {"learning_rate": 0.5})
                for n in (ours_net, ref_net)]
    for i in range(3):
        X = batch((6, 1, 10, 10), i)
        Ys = [step_net(n, X) for n in (ours_net, ref_net)]
        onp.testing.assert_allclose(Ys[0].asnumpy(), Ys[1].asnumpy(), **TOL)
        # (sums over the batch: within 1e-4 of the largest)
        want = ref_net[0].weight.grad().asnumpy()
        onp.testing.assert_allclose(ours_net[0].weight.grad().asnumpy(), want, rtol=1e-4,
                                    atol=1e-4 * max(1, onp.abs(want).max()))
        for t in trainers:
            t.step(6)
    onp.testing.assert_allclose(ours_net[1].moving_var.data().asnumpy().ravel(),
                                ref_net[1].running_var.data().asnumpy(), **TOL)
    # prediction in the same compiled graph: the moving statistics, not the batch's
    X = batch((6, 1, 10, 10), 9)
    onp.testing.assert_allclose(ours_net(X).asnumpy(), ref_net(X).asnumpy(), **TOL)
    assert ours_net._cached_op is not None


def test_export_and_import(tmp_path):
    net = conv_bn_net(CompiledBatchNorm(8, num_dims=4))
    step_net(net, batch((6, 1, 10, 10)))
    X = batch((6, 1, 10, 10), 1)
    Y = net(X)
    net.export(str(tmp_path / "net"))
    clone = gluon.SymbolBlock.imports(str(tmp_path / "net-symbol.json"), ["data"],
                                      str(tmp_path / "net-0000.params"))
    onp.testing.assert_allclose(clone(X.as_nd_ndarray()).asnumpy(), Y.asnumpy(), rtol=1e-6,
                                atol=1e-6)


def test_lenet_cpp_is_one_graph():
    net = models.lenet("cpp")
    assert type(net) is nn.HybridSequential and isinstance(net[1], CompiledBatchNorm)


MISFITS = """
import mxnet as mx
from mxnet import np, npx
from mxnet.gluon import nn
from d2lbn.fast import CompiledBatchNorm
npx.set_np()
net = nn.HybridSequential()
net.add(nn.Conv2D(16, kernel_size=3), CompiledBatchNorm(6, num_dims=4))
net.initialize()
net.hybridize()
try:
    net(np.ones((2, 1, 8, 8))).wait_to_read()
except Exception as e:  # Gluon wraps MXNet's error while it sizes the parameters
    print("refused:", type(e).__name__, " ".join(str(e).split())[-300:])
# unknown dimensions (2^32 - 1 inside the operator) leave the inference to later
X = mx.sym.var("X")
Y = mx.sym.d2lbn_batch_norm(X, mx.sym.var("g"), mx.sym.var("b"), mx.sym.var("m"),
                            mx.sym.var("mm"), mx.sym.var("mv"), eps=1e-5, momentum=0.9)
per_channel = dict(g=(1, 3, 1, 1), b=(1, 3, 1, 1), m=(1,), mm=(1, 3, 1, 1), mv=(1, 3, 1, 1))
print("partial:", Y.infer_shape_partial(X=(-1, 3, 4, 4), **per_channel)[1][0])
# the operator called directly in a dtype it has no kernel for
p = mx.nd.ones((1, 3, 1, 1), dtype="float16")
try:
    mx.nd.d2lbn_batch_norm(mx.nd.ones((2, 3, 2, 2), dtype="float16"), p, p, p[0, 0, 0], p, p,
                           eps=1e-5, momentum=0.9).wait_to_read()
except mx.base.MXNetError as e:
    print("float16:", "float32 or float64" in str(e))
"""


def test_misfits_in_a_graph_raise_instead_of_aborting():
    # In a subprocess: a failed inference inside the operator would end the process
    done = subprocess.run([sys.executable, "-c", MISFITS], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "refused:" in done.stdout and "inconsistent" in done.stdout, done.stdout
    assert "partial: (-1, 3, 4, 4)" in done.stdout, done.stdout
    assert "float16: True" in done.stdout, done.stdout


# -- the build ----------------------------------------------------------------------------------

def test_without_a_compiler_falls_back_with_a_message(monkeypatch, tmp_path):
    monkeypatch.setattr(compiled, "_loaded", None)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setenv("CXX", "no-such-c++")
    with pytest.raises(compiled.CompilerError, match="no C.. compiler.*no-such-c"):
        CompiledBatchNorm(3, num_dims=2)
    with pytest.warns(RuntimeWarning, match="no C.. compiler(.|\n)*FastBatchNorm"):
        bn = compiled.compiled_batch_norm(3, num_dims=2)
    assert type(bn) is FastBatchNorm
    with pytest.warns(RuntimeWarning):
        net = models.lenet("cpp")
    assert type(net) is models.LayerwiseSequential  # FastBatchNorm's container


def test_unwritable_cache_is_a_compiler_error(monkeypatch, tmp_path):
    monkeypatch.setattr(compiled, "_loaded", None)
    (tmp_path / "file").write_text("")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "file"))  # a file, not a folder
    with pytest.raises(compiled.CompilerError, match="cannot build"):
        compiled.load()


def test_cache_name_follows_source_version_and_flags(monkeypatch):
    path = compiled.library_path()
    assert path.parent == compiled.cache_dir() and path.suffix == ".so"
    monkeypatch.setattr(mx, "__version__", "0.0.0")
    assert compiled.library_path() != path
    monkeypatch.undo()
    monkeypatch.setattr(compiled, "FLAGS", compiled.FLAGS + ("-g",))
    assert compiled.library_path() != path
    assert not any(f.startswith("-march") for f in compiled.FLAGS)


def test_concurrent_first_uses_build_once(tmp_path):
    # Three processes at once on an empty cache: one compiles, the others wait
    # for it and take its file; nothing half-built is left
    log = tmp_path / "compiles.log"
    cxx = tmp_path / "cxx"
    cxx.write_text(f'#!/bin/sh\ncase "$1" in --version) ;; *) echo x >> {log} ;; esac\n'
                   'exec g++ "$@"\n')
    cxx.chmod(0o755)
    env = dict(os.environ, XDG_CACHE_HOME=str(tmp_path / "cache"), CXX=str(cxx))
    code = "from d2lbn.fast import compiled; print(compiled.build())"
    procs = [subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE,
                              text=True) for _ in range(3)]
    paths = {p.communicate(timeout=600)[0].strip() for p in procs}
    assert all(p.returncode == 0 for p in procs)
    assert len(paths) == 1 and log.read_text().count("x") == 1
    built = sorted(p.name for p in (tmp_path / "cache" / "d2lbn").iterdir())
    name = os.path.basename(paths.pop())
    assert built == [name[:-3] + ".lock", name]
    check = textwrap.dedent(f"""
        import mxnet as mx
        mx.library.load({str(tmp_path / "cache" / "d2lbn" / name)!r}, verbose=False)
        print(hasattr(mx.nd, "d2lbn_batch_norm"))""")
    out = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True,
                         timeout=300)
    assert out.stdout.strip() == "True", out.stderr[-2000:]
