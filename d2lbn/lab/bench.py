"""``python -m d2lbn bench``: the from-scratch BatchNorms against Gluon's, on this machine.

Three measurements in one run, so that they share the machine's state:
(1) LeNet training throughput per BN variant (synthetic Fashion-MNIST-shaped
batches, a fixed window of batches after warm-up, split into rounds that
alternate the variants; each round's figure is kept, so that the table shows
how far the ratios move within one run); (2) forward+backward median time of
each BN implementation on a few shapes; (3) the copy bandwidth of the machine and,
from it, the least time a BN forward+backward could take on each shape.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import mxnet as mx
import numpy as onp
from mxnet import autograd, gluon, init, np, npx
from mxnet.gluon import nn

from .. import models
from ..fast import CompiledBatchNorm, FastBatchNorm, affine
from ..functional import batch_norm
from ..layers import HybridBatchNorm
from ..train import accuracy, sgd_step, train_epoch
from . import floatpath, mode

# LeNet variants: (norm for models.lenet, hybridize?)
LENET = {
    "scratch": ("scratch", False),     # the book's layer, imperative
    "scratch_hybrid": ("hybrid", True),  # the book's math, each layer compiled
    "scratch_fast": ("fast", True),    # FastBatchNorm, each layer compiled
    "scratch_cpp": ("cpp", True),      # CompiledBatchNorm (C++), the whole net one graph
    "gluon": ("gluon", False),         # nn.BatchNorm, imperative
    "gluon_hybrid": ("gluon", True),   # nn.BatchNorm, the whole net one graph
    "none": (None, True),              # no BN at all, one graph
}
OP_VARIANTS = ["scratch", "scratch_hybrid", "scratch_fast", "scratch_cpp", "gluon",
               "gluon_hybrid"]
LOOPS = {"read_every_batch": "hybridize(), each batch's loss and accuracy read as it ends "
                             "(the loop before)",
         "train_loop": "train.train's loop: hybridize(static_alloc=True, static_shape=True), "
                       "sums kept on the device and read once"}
DESCRIPTIONS = {
    "lenet": "LeNet with BN before each sigmoid, SGD in train.train's loop, synthetic "
             "Fashion-MNIST-shaped batches; "
             "scratch: d2lbn.BatchNorm; scratch_hybrid: d2lbn.HybridBatchNorm (the same math, "
             "compiled), each layer hybridized; scratch_fast: d2lbn.fast.FastBatchNorm, each "
             "layer hybridized; scratch_cpp: d2lbn.fast.CompiledBatchNorm (C++), the whole net "
             "one graph; gluon: nn.BatchNorm, imperative; gluon_hybrid: nn.BatchNorm, "
             "the whole net one graph; none: no BN, one graph; rounds_examples_per_sec: the "
             "window's rounds, which alternate the variants",
    "loop": "LeNet with nn.BatchNorm, hybridized, on the same batches: "
            + "; ".join(f"{name}: {text}" for name, text in LOOPS.items()),
    "ops": "one recorded forward and backward; scratch: d2lbn.batch_norm; scratch_hybrid: "
           "HybridBatchNorm hybridized; scratch_fast: FastBatchNorm hybridized; scratch_cpp: "
           "CompiledBatchNorm hybridized; gluon: "
           "npx.batch_norm (fused), imperative; gluon_hybrid: nn.BatchNorm hybridized; "
           "floor_ms: float32 bytes read and written (X, Y forward; X, dY, dX backward) at the "
           "copy bandwidth; call_ms: one recorded call of a hybridized block holding one "
           "elementwise operator (X * 1), forward and backward: on a small array, the fixed "
           "cost every BN layer in a graph pays before its own arithmetic (on a large one, "
           "MXNet's elementwise pass over the array counts too); conv1x1_ms (4-D shapes): one "
           "1x1 convolution forward and backward, "
           "the fastest general kernel that scales each channel, which any BN built from "
           "general operations needs at least once; conv_ms, conv_bn_ms (4-D shapes; "
           "scratch_cpp and gluon_hybrid): a 1x1 convolution C -> C (oneDNN, whose output "
           "may be in a blocked layout) alone, and followed by the BN in one hybridized "
           "graph: the difference is the BN's cost there, layout reorders included",
}
SHAPES = [(256, 6, 24, 24), (256, 16, 8, 8), (256, 120), (64, 64, 56, 56)]
# Float32 values a BN must move at least: forward reads X and writes Y,
# backward reads X and dY and writes dX
BYTES_PER_ELEMENT = 4 * (2 + 3)


def parse_args(argv: list[str]) -> argparse.Namespace:
    """The options; ``--quick`` shrinks every count that is not given explicitly."""
    p = argparse.ArgumentParser(prog="python -m d2lbn bench", description=__doc__.split("\n")[0])
    p.add_argument("--json", type=Path, help="also write the results to this JSON file")
    p.add_argument("--quick", action="store_true", help="small counts: done in under 2 minutes")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--batches", type=int, help="LeNet timing window in batches (default 120)")
    p.add_argument("--warmup", type=int, help="LeNet warm-up batches (default 10)")
    p.add_argument("--rounds", type=int,
                   help="the window is split into rounds (default 4, at most one per batch)")
    p.add_argument("--reps", type=int, help="timed repetitions per op measurement (default 25)")
    p.add_argument("--shapes", type=_shapes, help="op shapes, e.g. 256x6x24x24,256x120")
    p.add_argument("--copy-mb", type=int, help="array size of the copy measurement (default 256)")
    p.add_argument("--variants", type=lambda s: s.split(","),
                   help=f"LeNet variants to run (default all: {','.join(LENET)})")
    args = p.parse_args(argv)
    # Quick mode (D2LBN_QUICK=1) is --quick, so that notebooks never branch on it
    args.quick = args.quick or mode.is_quick()
    if mode.is_quick():
        mode.announce()
    defaults = dict(batches=(120, 20), warmup=(10, 3), rounds=(4, 2), reps=(25, 5),
                    copy_mb=(256, 64))
    for name, (full, quick) in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, quick if args.quick else full)
    args.shapes = args.shapes or SHAPES
    args.variants = args.variants or list(LENET)
    unknown = set(args.variants) - set(LENET)
    if unknown:
        p.error(f"unknown variants {sorted(unknown)}; choose from {','.join(LENET)}")
    if args.batches < 1 or args.rounds < 1 or args.reps < 1:
        p.error("--batches, --rounds and --reps must be positive")
    args.rounds = min(args.rounds, args.batches)
    return args


def _shapes(text: str) -> list[tuple[int, ...]]:
    return [tuple(int(n) for n in s.split("x")) for s in text.split(",") if s]


def machine() -> dict:
    """What the numbers were measured on."""
    features = mx.runtime.Features()
    return {"cpu": floatpath.cpu()[0], "cores": os.cpu_count(), "mxnet": mx.__version__,
            "numpy": onp.__version__, "python": platform.python_version(),
            "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
            "mkldnn": features.is_enabled("MKLDNN"), "context": "cpu(0)"}


def copy_bandwidth(megabytes: int, reps: int = 5) -> dict:
    """Best copy rate of a large float32 array, in GB/s of bytes read plus written."""
    n = megabytes * 2**20 // 4
    src, dst = np.ones((n,), dtype="float32"), np.zeros((n,), dtype="float32")
    src_np, dst_np = onp.ones((n,), dtype="float32"), onp.zeros((n,), dtype="float32")

    def mx_copy():
        src.copyto(dst)
        dst.wait_to_read()

    best = {}
    for name, fn in (("mxnet", mx_copy), ("numpy", lambda: onp.copyto(dst_np, src_np))):
        fn()
        secs = min(_timed(fn) for _ in range(reps))
        best[name] = 2 * 4 * n / secs / 1e9
    return best


def median_ms(fn, reps: int = 25) -> float:
    """Median milliseconds of ``fn()`` (which must wait for its result) after a warm-up call."""
    fn()
    return statistics.median(_timed(fn) for _ in range(mode.steps(reps))) * 1e3


def _timed(fn) -> float:
    tic = time.perf_counter()
    fn()
    return time.perf_counter() - tic


# --------------------------------------------------------------------------- LeNet
STATIC = dict(static_alloc=True, static_shape=True)  # as train.train hybridizes


def _net_and_trainer(norm, ctx: mx.Context, hybridize: dict | None):
    """LeNet with ``norm`` on ``ctx``, hybridized with ``hybridize`` unless None, and its SGD."""
    net = models.lenet(norm)
    net.initialize(init.Xavier(), ctx=ctx)
    if hybridize is not None:
        net.hybridize(**hybridize)
    return net, gluon.Trainer(net.collect_params(), "sgd", {"learning_rate": 0.9})


def _lenet(variant: str, ctx: mx.Context):
    norm, hybridize = LENET[variant]
    return _net_and_trainer(norm, ctx, STATIC if hybridize else None)


def _train_batches(net, trainer, batches, count: int, ctx: mx.Context) -> float:
    """Train on ``count`` batches with ``train.train``'s loop; return the seconds taken."""
    return train_epoch(net, trainer, [batches[i % len(batches)] for i in range(count)], [ctx])[3]


def synthetic_batches(batch_size: int, ctx: mx.Context, n: int = 4) -> list:
    """``n`` Fashion-MNIST-shaped batches of noise and labels, the same in every run."""
    rng = onp.random.default_rng(0)
    mx.random.seed(0)
    return [(np.array(rng.normal(size=(batch_size, 1, 28, 28)), dtype="float32", ctx=ctx),
             np.array(rng.integers(0, 10, size=batch_size), dtype="float32", ctx=ctx))
            for _ in range(n)]


def _loop_net(loop: str, ctx: mx.Context):
    return _net_and_trainer("gluon", ctx, {} if loop == "read_every_batch" else STATIC)


def _loop_round(loop: str, net, trainer, batches, count: int, ctx: mx.Context) -> float:
    """Seconds for ``count`` training steps with ``loop``'s bookkeeping."""
    if loop == "train_loop":
        return _train_batches(net, trainer, batches, count, ctx)
    window = [batches[i % len(batches)] for i in range(count)]
    loss = gluon.loss.SoftmaxCrossEntropyLoss()
    tic = time.perf_counter()
    loss_sum = correct = 0.0
    for X, y in window:
        l, y_hat = sgd_step(net, trainer, loss, X, y)
        loss_sum += float(l.sum())  # each read waits for the step
        correct += accuracy(y_hat, y)
    return time.perf_counter() - tic


def bench_loop(args, ctx: mx.Context, batches, log=print) -> dict:
    """LeNet-BN (``nn.BatchNorm``) training steps/s under the two loops, in alternating rounds."""
    runs = {loop: _loop_net(loop, ctx) for loop in LOOPS}
    for loop, (net, trainer) in runs.items():
        _loop_round(loop, net, trainer, batches, args.warmup, ctx)
    per_round = [args.batches // args.rounds + (r < args.batches % args.rounds)
                 for r in range(args.rounds)]
    secs = {loop: [] for loop in runs}
    for count in per_round:
        for loop, (net, trainer) in runs.items():
            secs[loop].append(_loop_round(loop, net, trainer, batches, count, ctx))
    rates = {loop: sum(per_round) * args.batch_size / sum(t) for loop, t in secs.items()}
    out = {**{f"{loop}_examples_per_sec": rate for loop, rate in rates.items()},
           "ratio": rates["train_loop"] / rates["read_every_batch"],
           "rounds_ratio": [a / b for a, b in zip(secs["read_every_batch"], secs["train_loop"])]}
    log(f"  loop: train.train's {rates['train_loop']:.0f} examples/s against "
        f"{rates['read_every_batch']:.0f} reading every batch: {out['ratio']:.2f}x")
    return out


def bench_lenet(args, ctx: mx.Context, log=print) -> list[dict]:
    """Examples/s of LeNet training per variant over ``args.batches`` batches."""
    batches = synthetic_batches(args.batch_size, ctx)
    runs = {v: _lenet(v, ctx) for v in args.variants}
    for net, trainer in runs.values():
        _train_batches(net, trainer, batches, args.warmup, ctx)
    per_round = [args.batches // args.rounds + (r < args.batches % args.rounds)
                 for r in range(args.rounds)]
    secs = {v: [] for v in runs}
    for count in per_round:
        for v, (net, trainer) in runs.items():  # rounds alternate the variants
            secs[v].append(_train_batches(net, trainer, batches, count, ctx))
    done = sum(per_round)
    out = [{"variant": v, "examples_per_sec": done * args.batch_size / sum(secs[v]),
            "batches": done,
            "rounds_examples_per_sec": [n * args.batch_size / t
                                        for n, t in zip(per_round, secs[v])]}
           for v in runs]
    for row in out:
        log(f"  lenet {row['variant']:>13s}: {row['examples_per_sec']:8.0f} examples/s")
    return out


# --------------------------------------------------------------------------- ops
def _op_step(variant: str, shape, ctx: mx.Context):
    """A closure running one recorded forward and backward of ``variant`` on ``shape``."""
    rng = onp.random.default_rng(1)
    C = shape[1]
    pshape = (1, C) + (1,) * (len(shape) - 2)
    X = np.array(rng.normal(2.0, 3.0, size=shape), dtype="float32", ctx=ctx)
    head = np.array(rng.normal(size=shape), dtype="float32", ctx=ctx)
    X.attach_grad()
    if variant == "conv1x1":
        forward = _conv1x1_forward(X)
    elif variant == "call":
        forward = _call_forward(X)
    elif variant in AFTER_CONV:
        forward = _conv_then(AFTER_CONV[variant], X)
    elif variant in ("scratch", "gluon"):
        gamma, beta = np.ones(pshape, ctx=ctx), np.zeros(pshape, ctx=ctx)
        mean, var = np.zeros(pshape, ctx=ctx), np.ones(pshape, ctx=ctx)
        gamma.attach_grad()
        beta.attach_grad()
        if variant == "scratch":
            def forward():
                return batch_norm(X, gamma, beta, mean, var, 1e-5, 0.9)[0]
        else:
            g, b, m, v = (a.reshape(-1) for a in (gamma, beta, mean, var))

            def forward():
                return npx.batch_norm(X, g, b, m, v, eps=1e-5, momentum=0.9,
                                      fix_gamma=False, axis=1)
    else:
        block = {"scratch_hybrid": lambda: HybridBatchNorm(C, num_dims=len(shape)),
                 "scratch_fast": lambda: FastBatchNorm(C, num_dims=len(shape)),
                 "scratch_cpp": lambda: CompiledBatchNorm(C, num_dims=len(shape)),
                 "gluon_hybrid": lambda: nn.BatchNorm(in_channels=C)}[variant]()
        block.initialize(ctx=ctx)
        block.hybridize()
        forward = lambda: block(X)

    def step():
        with autograd.record():
            Y = forward()
        Y.backward(head)
        X.grad.wait_to_read()

    return step


# A 1x1 convolution C -> C alone, and followed by a BN (a factory of C)
AFTER_CONV = {"conv": None,
              "conv+scratch_cpp": lambda C: CompiledBatchNorm(C, num_dims=4),
              "conv+gluon_hybrid": lambda C: nn.BatchNorm(in_channels=C)}


def _conv_then(norm, X):
    """A 1x1 convolution of ``X`` (oneDNN's), then ``norm(C)`` if given, as one graph."""
    # oneDNN may leave the convolution's output in a blocked layout (channels in
    # groups of 8 or 16); an operator outside oneDNN gets it reordered first
    C = X.shape[1]
    net = nn.HybridSequential()
    net.add(nn.Conv2D(C, kernel_size=1, in_channels=C, use_bias=False))
    if norm:
        net.add(norm(C))
    net.initialize(ctx=X.ctx)
    net.hybridize()
    return lambda: net(X)


class _Scale(nn.HybridBlock):
    """``X * 1``: one elementwise operator, forward and backward, and nothing else."""

    def hybrid_forward(self, F, X):
        return X * 1.0


def _call_forward(X):
    """One recorded call of a hybridized block with a single elementwise operator."""
    # On a small array, what any BN layer in a graph pays per call before its own
    # arithmetic: the cached graph's invocation, the recorded backward, one pass each
    # way (on a large array, MXNet's elementwise pass over it counts too)
    block = _Scale()
    block.hybridize(**STATIC)  # as CompiledBatchNorm does
    return lambda: block(X)


def _conv1x1_forward(X):
    """One per-channel affine map of ``X`` as ``fast`` computes it (a 1x1 convolution)."""
    # Any BN built from general operations scales every channel of the whole
    # array, forward and backward, and on CPU this is the fastest general
    # kernel that does (broadcasting and batched matrix products are slower):
    # its time is what such a BN cannot go below
    C = X.shape[1]
    a, b = np.ones(C, ctx=X.ctx), np.zeros(C, ctx=X.ctx)
    a.attach_grad()
    b.attach_grad()
    return lambda: affine(mx, X, a, b, C)


def bench_ops(args, ctx: mx.Context, copy_gbps: float, log=print) -> list[dict]:
    """Median forward+backward ms per implementation and shape, with the floor and 1x1 conv."""
    out = []
    for shape in args.shapes:
        size = int(onp.prod(shape))
        floor_ms = size * BYTES_PER_ELEMENT / (copy_gbps * 1e9) * 1e3
        variants = OP_VARIANTS + ["call"] + (["conv1x1", *AFTER_CONV] if len(shape) == 4
                                             else [])
        steps = {v: _op_step(v, shape, ctx) for v in variants}
        # The book's layer takes seconds on the large shape: fewer repetitions,
        # within a time budget per implementation (smaller in quick mode)
        budget, least = (5.0, 1) if args.quick else (20.0, 3)
        times, reps = {}, {}
        for variant, step in steps.items():
            step()  # builds and warms up
            times[variant] = [_timed(step)]
            first = times[variant][0]
            reps[variant] = (args.reps if first * args.reps < budget
                             else max(least, int(budget / first)))
        # Rounds alternate the implementations, so that a slow spell of a shared
        # machine does not land on one of them only
        rounds = min(args.rounds, min(reps.values()))
        for r in range(rounds):
            for variant, step in steps.items():
                left = reps[variant] - 1
                n = left // rounds + (r < left % rounds)
                times[variant] += [_timed(step) for _ in range(n)]
        ms = {v: statistics.median(times[v]) * 1e3 for v in steps}
        for variant in OP_VARIANTS:
            out.append({"shape": list(shape), "variant": variant, "fwd_bwd_ms": ms[variant],
                        "floor_ms": floor_ms, "call_ms": ms["call"],
                        "conv1x1_ms": ms.get("conv1x1"),
                        "conv_ms": ms.get("conv"), "conv_bn_ms": ms.get(f"conv+{variant}"),
                        "reps": len(times[variant])})
            log(f"  {'x'.join(map(str, shape)):>12s} {variant:>13s}: {ms[variant]:9.3f} ms "
                f"(floor {floor_ms:.3g} ms)")
        del steps
        npx.waitall()
    return out


# --------------------------------------------------------------------------- report
def round_ratios(row: dict, ref: dict) -> tuple[float, float]:
    """The lowest and highest per-round ratio of ``row``'s throughput to ``ref``'s.

    Rounds alternate the variants, so each ratio pairs two runs a few seconds
    apart: their spread shows how far one run on this machine can be trusted.
    """
    ratios = [a / b for a, b in zip(row["rounds_examples_per_sec"],
                                     ref["rounds_examples_per_sec"])]
    return min(ratios), max(ratios)


def _after_conv_table(shapes, ms) -> list[str]:
    """BN's share of a 1x1 convolution followed by BN, built-in against C++."""
    pairs = [(s, ms.get((tuple(s), "gluon_hybrid")), ms.get((tuple(s), "scratch_cpp")))
             for s in shapes]
    pairs = [(s, g, c) for s, g, c in pairs if g and c and g.get("conv_bn_ms")]
    if not pairs:
        return []
    lines = ["", "after a 1x1 convolution, one graph: BN's share = conv+BN - conv (ms), "
             "layout reorders included",
             f"{'shape':18s}{'conv':>10s}{'gluon_hybrid':>16s}{'scratch_cpp':>16s}{'ratio':>8s}"]
    for s, g, c in pairs:
        gluon, cpp = (r["conv_bn_ms"] - r["conv_ms"] for r in (g, c))
        ratio = f"{cpp / gluon:8.2f}" if gluon > 0 else f"{'-':>8s}"
        lines.append(f"{'x'.join(map(str, s)):18s}{g['conv_ms']:10.3f}{gluon:16.3f}{cpp:16.3f}"
                     + ratio)
    return lines


def table(result: dict) -> str:
    """The results as two plain-text tables."""
    lines = [f"copy bandwidth {result['copy_gbps']:.1f} GB/s (read + write), "
             f"{result['machine']['cpu']}, {result['machine']['cores']} cores", ""]
    lenet = {r["variant"]: r for r in result["lenet"]}
    if lenet:
        ref = lenet.get("gluon_hybrid")
        lines.append(f"{'LeNet training':16s}{'examples/s':>12s}{'x gluon_hybrid':>16s}"
                     f"{'per round':>14s}")
        for v, r in lenet.items():
            line = f"{v:16s}{r['examples_per_sec']:12.0f}"
            if ref:
                low, high = round_ratios(r, ref)
                line += f"{r['examples_per_sec'] / ref['examples_per_sec']:16.2f}"
                line += f"{low:9.2f}-{high:.2f}"
            lines.append(line)
        lines.append("")
    shapes = []
    for r in result["ops"]:
        if r["shape"] not in shapes:
            shapes.append(r["shape"])
    if shapes:
        ms = {(tuple(r["shape"]), r["variant"]): r for r in result["ops"]}
        lines.append("forward+backward ms (median); floor = bytes moved / copy bandwidth; "
                     "call = a recorded call of one elementwise op, on a small array the fixed "
                     "cost a BN layer in a graph pays; 1x1 conv = one per-channel map, the least "
                     "a BN from general ops does")
        lines.append(f"{'shape':18s}" + "".join(f"{v:>16s}" for v in OP_VARIANTS)
                     + f"{'floor':>10s}{'call':>10s}{'1x1 conv':>10s}")
        for s in shapes:
            row = [ms.get((tuple(s), v)) for v in OP_VARIANTS]
            first = next(r for r in row if r)
            conv, call = first.get("conv1x1_ms"), first.get("call_ms")
            lines.append(f"{'x'.join(map(str, s)):18s}"
                         + "".join(f"{r['fwd_bwd_ms']:16.3f}" if r else f"{'-':>16s}"
                                   for r in row) + f"{first['floor_ms']:10.3g}"
                         + "".join(f"{t:10.3f}" if t else f"{'-':>10s}" for t in (call, conv)))
        lines += _after_conv_table(shapes, ms)
    if "loop" in result:
        loop = result["loop"]
        lines += ["", f"training loop, LeNet with nn.BatchNorm: train.train's "
                  f"{loop['train_loop_examples_per_sec']:.0f} examples/s against "
                  f"{loop['read_every_batch_examples_per_sec']:.0f} reading every batch: "
                  f"{loop['ratio']:.2f}x (per round {min(loop['rounds_ratio']):.2f}-"
                  f"{max(loop['rounds_ratio']):.2f})"]
    return "\n".join(lines)


def markdown(result: dict) -> str:
    """``results/bench.md``: the tables of one run, what each variant is, and the machine."""
    m = result["machine"]
    return "\n".join([
        "# Benchmark (one run of `python -m d2lbn bench`)", "",
        f"{m['cpu']}, {m['cores']} cores, MXNet {m['mxnet']}, Python {m['python']}; ratios "
        "are within this one run, whose rounds alternate the variants.", "",
        "```", table(result), "```", "",
        *(f"- **{name}**: {text}" for name, text in result["descriptions"].items())]) + "\n"


def main(argv: list[str]) -> int:
    """Run the benchmark; print the tables; write ``--json`` if asked; return 0."""
    args = parse_args(argv)
    ctx = mx.cpu()
    result: dict = {"machine": machine(), "descriptions": DESCRIPTIONS, "settings": {
        "quick": args.quick, "batch_size": args.batch_size, "batches": args.batches,
        "warmup": args.warmup, "rounds": args.rounds, "reps": args.reps}}
    print(f"[d2lbn] bench{' (quick)' if args.quick else ''} on {result['machine']['cpu']}",
          flush=True)
    rates = copy_bandwidth(args.copy_mb)
    result["copy_gbps"] = max(rates.values())
    result["machine"]["copy_gbps_by"] = rates
    result["lenet"] = bench_lenet(args, ctx)
    result["loop"] = bench_loop(args, ctx, synthetic_batches(args.batch_size, ctx))
    result["ops"] = bench_ops(args, ctx, result["copy_gbps"])
    print()
    print(table(result))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=1) + "\n")
        args.json.with_suffix(".md").write_text(markdown(result))
        print(f"\nwrote {args.json} and {args.json.with_suffix('.md')}")
    return 0
