"""Command line: ``python -m d2lbn {data,run,train,bench,recheck}``."""

from __future__ import annotations

import argparse
import sys

from .lab.argtypes import at_least, positive_float, seed

NORMS = ("scratch", "hybrid", "fast", "gluon", "none")


def main(argv: list[str] | None = None) -> int:
    """Dispatch to the subcommands; return the exit code."""
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="python -m d2lbn", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("data", help="where Fashion-MNIST comes from; --fetch obtains it",
                   add_help=False)
    sub.add_parser("bench", help="from-scratch vs built-in BatchNorm: LeNet and op timings",
                   add_help=False)
    sub.add_parser("recheck", help="re-run notebooks on another float path; do their claims "
                   "hold?", add_help=False)
    run = sub.add_parser("run", help="execute notebooks (all by default), write results/")
    run.add_argument("notebooks", nargs="*", help="paths or numbers, e.g. 02 03")
    run.add_argument("--jobs", "-j", type=at_least(1), default=None,
                     help="processes at once, kernels and their workers (default: the cores)")
    tr = sub.add_parser("train", help="train the chapter's LeNet once, log per epoch")
    tr.add_argument("--norm", default="scratch", choices=NORMS)
    tr.add_argument("--lr", type=positive_float, default=1.0)
    tr.add_argument("--num-epochs", type=at_least(1), default=10)
    tr.add_argument("--batch-size", type=at_least(1), default=256)
    tr.add_argument("--seed", type=seed, default=0)
    tr.add_argument("--num-train", type=at_least(1), default=None,
                    help="the first examples only")
    tr.add_argument("--workers", type=at_least(1), default=1,
                    help="worker processes, each with its shard of every batch (MXNet's "
                         "dist_sync kvstore on 127.0.0.1); 1: this process alone")
    tr.add_argument("--sync-bn", action="store_true",
                    help="with --workers: BN statistics of the whole batch, not each worker's")
    args, rest = parser.parse_known_args(argv)
    if args.command == "data":
        from . import data

        return data.main(rest)
    if args.command == "bench":
        from .lab import bench

        return bench.main(rest)
    if args.command == "recheck":
        from .lab import recheck

        return recheck.main(rest)
    if rest:
        (run if args.command == "run" else tr).error(
            f"unrecognized arguments: {' '.join(rest)}")
    if args.command == "run":
        from .lab import parallel, runner

        try:
            paths = runner.resolve(args.notebooks) if args.notebooks else None
            jobs = args.jobs or parallel.jobs()  # D2LBN_JOBS, checked before anything runs
        except ValueError as err:
            run.error(str(err))
        runner.run_all(paths, jobs)
        return 0
    if args.sync_bn and (args.workers == 1 or args.norm not in ("scratch", "hybrid", "fast")):
        tr.error("--sync-bn needs --workers 2 or more and --norm scratch, hybrid or fast")
    from . import data, models, train

    train_iter, test_iter = data.load_data_fashion_mnist(args.batch_size, num_train=args.num_train)
    norm = None if args.norm == "none" else args.norm
    if args.workers > 1:
        from . import dist

        try:
            dist.train(norm, train_iter, test_iter, args.num_epochs, args.lr,
                       num_workers=args.workers, sync_bn=args.sync_bn, seed=args.seed,
                       hybridize=norm != "scratch")
        except dist.WorkerError as err:
            print(f"python -m d2lbn train: {err}", file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            print("python -m d2lbn train: interrupted; every role stopped", file=sys.stderr)
            return 130
        return 0
    net = models.lenet(norm)
    train.train(net, train_iter, test_iter, args.num_epochs, args.lr, seed=args.seed,
                hybridize=norm != "scratch")
    return 0


if __name__ == "__main__":
    sys.exit(main())
