"""`plateau ...`: the command line. It owns argv and the environment; everything below gets data.

Exit codes: 0 success, 1 the run failed, 2 bad input found before anything started.
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings

from service.data import DataError
from service.train import AddressError
from service.spec import SpecError, SpecWarning, load_spec

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT = 0, 1, 2


class BadInput(Exception):
    """Raised by any layer for input that is wrong before anything started (exit 2)."""


def _add_overrides(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", help="auto | mnist | sample | PATH (.npz or Parquet dir/URI)")
    p.add_argument("--workers", type=int, help="number of Ray Train workers (0 = in-process local mode)")
    p.add_argument("--epochs", type=int, help="maximum epochs")
    p.add_argument("--gpu", action="store_true", default=None, help="train on GPUs (one per worker)")
    p.add_argument("--output", help="output directory (default: the spec's, ./results)")
    p.add_argument("--name", help="run name (default: the spec's)")
    p.add_argument("--fresh", action="store_true", help="discard this name's earlier results and checkpoints")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override any spec field, e.g. --set reduce_lr.patience=2 (repeatable)")


def overrides_from(args: argparse.Namespace, prefix: str = "") -> list[str]:
    """The CLI's shorthand flags as `--set` overrides (a compare spec applies them to its base)."""
    out: list[str] = []
    flags = {"data": "data.source", "workers": "scaling.num_workers", "epochs": "training.epochs",
             "gpu": "scaling.use_gpu"}
    for attr, key in flags.items():
        value = getattr(args, attr, None)
        if value is not None:
            out.append(f"{prefix}{key}={str(value).lower() if isinstance(value, bool) else value}")
    # name and output belong to the top-level spec (the study for compare).
    for attr in ("output", "name"):
        value = getattr(args, attr, None)
        if value is not None:
            out.append(f"{attr}={value}")
    return out + list(args.overrides or [])


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="plateau",
        description="Data-parallel Keras MNIST on Ray with ReduceLROnPlateau and EarlyStopping "
                    "decided from the global validation metrics.",
    )
    parser.add_argument("--verbose", action="store_true", help="show TensorFlow and Ray logs")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train one spec (default: the seed's model)")
    p.add_argument("spec", nargs="?", help="train spec YAML")
    p.add_argument("--address", help="Ray cluster to join: 'auto' or HOST:PORT (default: embedded local Ray)")
    _add_overrides(p)

    p = sub.add_parser("compare", help="run a Ray Tune comparison of callback settings")
    p.add_argument("spec", help="compare spec YAML")
    p.add_argument("--address", help="Ray cluster to join (default: embedded local Ray)")
    _add_overrides(p)

    p = sub.add_parser("run", help="run a spec of either kind (the entrypoint jobs use)")
    p.add_argument("spec", help="spec YAML")
    p.add_argument("--address", help="Ray cluster to join (default: embedded local Ray, or the job's cluster)")
    _add_overrides(p)

    p = sub.add_parser("submit", help="submit a spec as a Ray job to a cluster")
    p.add_argument("spec", help="spec YAML")
    p.add_argument("--address", help="job server, e.g. http://127.0.0.1:8265 (default: RAY_API_SERVER_ADDRESS / RAY_ADDRESS)")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--wait", action="store_true", help="wait for the job to end; exit non-zero if it failed")
    mode.add_argument("--follow", action="store_true", help="stream the job's logs until it ends")
    _add_overrides(p)

    for name, helptext in (("status", "show a job's status"), ("logs", "print a job's logs"),
                           ("stop", "stop a job")):
        p = sub.add_parser(name, help=helptext)
        p.add_argument("job_id")
        p.add_argument("--address", help="job server (default: RAY_API_SERVER_ADDRESS / RAY_ADDRESS)")
        if name == "logs":
            p.add_argument("--follow", action="store_true", help="keep streaming until the job ends")

    p = sub.add_parser("jobs", help="list this product's jobs on a cluster")
    p.add_argument("--address", help="job server (default: RAY_API_SERVER_ADDRESS / RAY_ADDRESS)")
    return parser


def _ray_address(args: argparse.Namespace) -> str | None:
    """Where `train`/`run` find Ray: --address, else the cluster a Ray job runs in (Ray sets
    RAY_ADDRESS for job drivers), else None = start an embedded Ray."""
    return args.address or os.environ.get("RAY_ADDRESS")


def _job_address(args: argparse.Namespace) -> str | None:
    return args.address or os.environ.get("RAY_API_SERVER_ADDRESS") or os.environ.get("RAY_ADDRESS")


def _run_spec(args: argparse.Namespace, kind: str | None) -> int:
    from service import train

    if kind == "compare" or (kind is None and _spec_kind(args.spec) == "compare"):
        from service import compare

        spec = load_spec(args.spec, overrides_from(args, prefix="base."))
        return compare.run(spec, address=_ray_address(args), verbose=args.verbose, fresh=args.fresh)
    spec = load_spec(args.spec, overrides_from(args))
    if spec.kind != "train":
        raise SpecError(f"{args.spec}: kind is {spec.kind!r}; use 'plateau {spec.kind}' or 'plateau run'")
    result = train.run(spec, address=_ray_address(args), verbose=args.verbose, fresh=args.fresh)
    return EXIT_OK if result.ok else EXIT_FAILED


def _spec_kind(path: str) -> str:
    from service.spec import read_yaml

    return str(read_yaml(path).get("kind", "train"))


def _quiet_warnings() -> None:
    """Spec warnings (legacy names) in one line; other libraries' deprecations stay hidden."""
    plain = warnings.formatwarning

    def short(message, category, *args, **kwargs):
        if issubclass(category, SpecWarning):
            return f"warning: {message}\n"
        return plain(message, category, *args, **kwargs)

    warnings.formatwarning = short


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _quiet_warnings()
    if not args.verbose:
        # Set before TensorFlow is first imported (the driver imports it through Ray Train).
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    try:
        if args.command == "train":
            return _run_spec(args, "train")
        if args.command == "compare":
            return _run_spec(args, "compare")
        if args.command == "run":
            return _run_spec(args, None)

        from service import jobs

        address = _job_address(args)
        if args.command == "submit":
            return jobs.submit(args.spec, address, overrides_from(args), wait=args.wait, follow=args.follow)
        if args.command == "status":
            return jobs.status(args.job_id, address)
        if args.command == "logs":
            return jobs.logs(args.job_id, address, follow=args.follow)
        if args.command == "stop":
            return jobs.stop(args.job_id, address)
        if args.command == "jobs":
            return jobs.list_jobs(address)
    except (SpecError, DataError, AddressError, BadInput) as exc:
        print(f"plateau: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("plateau: interrupted", file=sys.stderr)
        return EXIT_FAILED
    return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
