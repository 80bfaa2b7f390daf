"""Command line: ``python -m d2lbn {data,run,train,bench}``."""

from __future__ import annotations

import argparse
import sys


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
    run.add_argument("notebooks", nargs="*", help="paths or numbers, e.g. 02 03")
    run.add_argument("--jobs", "-j", type=int, default=None,
                     help="processes at once, kernels and their workers (default: the cores)")
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
        from .lab import bench

        return bench.main(rest)
    if rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    if args.command == "run":
        from .lab import runner

        if args.jobs is not None and args.jobs < 1:
            parser.error(f"--jobs must be at least 1, got {args.jobs}")
        try:
            paths = runner.resolve(args.notebooks) if args.notebooks else None
        except ValueError as err:
            parser.error(str(err))
        runner.run_all(paths, args.jobs)
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
