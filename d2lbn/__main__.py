"""Command line: ``python -m d2lbn {data,run,train,bench}``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    """Dispatch to the subcommands; return the exit code."""
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="python -m d2lbn", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("data", help="where Fashion-MNIST comes from; --fetch obtains it",
                   add_help=False)
    sub.add_parser("bench", help="from-scratch vs built-in BatchNorm: LeNet and op timings",
                   add_help=False)
    run = sub.add_parser("run", help="execute notebooks (all by default), write results/")
    run.add_argument("notebooks", nargs="*", type=Path)
    tr = sub.add_parser("train", help="train the chapter's LeNet once, log per epoch")
    tr.add_argument("--norm", default="scratch", help="scratch | hybrid | fast | gluon | none")
    tr.add_argument("--lr", type=float, default=1.0)
    tr.add_argument("--num-epochs", type=int, default=10)
    tr.add_argument("--batch-size", type=int, default=256)
    tr.add_argument("--seed", type=int, default=0)
    args, rest = parser.parse_known_args(argv)
    if args.command == "data":
        from . import data

        return data.main(rest)
    if args.command == "bench":
        from . import bench

        return bench.main(rest)
    if rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    if args.command == "run":
        from .notebooks import run_all

        run_all([p.resolve() for p in args.notebooks] or None)
        return 0
    from . import data, models, train

    train_iter, test_iter = data.load_data_fashion_mnist(args.batch_size)
    norm = None if args.norm == "none" else args.norm
    net = models.lenet(norm)
    train.train(net, train_iter, test_iter, args.num_epochs, args.lr, seed=args.seed,
                animate=False, hybridize=norm != "scratch")
    return 0


if __name__ == "__main__":
    sys.exit(main())
