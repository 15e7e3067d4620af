"""`plateau ...`: the command line. It owns argv and the environment; everything below gets data.

Exit codes (`service.errors`): 0 success, 1 the run failed, 2 bad input found before anything
started (any `BadInput`: a spec, data, an address, a job server, the run's folder; one
`plateau: ...` line per problem on stderr), 130 / 143 when Ctrl-C / SIGTERM ended a run
(`service.signals`), for a run and a study. `plateau check` exits 2 with the line `train`,
`compare` or (with --submit) `submit` would print, and starts nothing.

What it reads from the environment, and hands down as parameters:

* RAY_ADDRESS: the cluster `train`/`compare`/`run` join without --address (Ray sets it for job
  drivers; its errors name the variable); RAY_API_SERVER_ADDRESS, else RAY_ADDRESS: the job
  server of `submit`, `status`, ...
* RAY_AUTH_TOKEN / RAY_AUTH_TOKEN_PATH / ~/.ray/auth_token (none with RAY_AUTH_MODE=disabled):
  the token sent to the job server.
* PLATEAU_JOB_PYTHON: the interpreter a submitted job runs on the cluster.
* KERAS_HOME: where full MNIST is cached (KERAS_HOME/datasets, as Keras does).
* MLFLOW_TRACKING_URI: the MLflow tracking URI of train/compare/run/check when neither --mlflow
  nor the spec's tracking.mlflow names one (it turns tracking on, as it points MLflow's own
  clients at a store); `submit` sends only --mlflow and the spec's, the job's driver reads its own.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shlex
import sys
import warnings
from pathlib import Path
from typing import Iterator, Optional

from service import progress
from service.compat import mlflow as compat_mlflow
from service.compat.mlflow import TRACKING_URI_VAR
from service.errors import EXIT_BAD_INPUT, EXIT_FAILED, EXIT_OK, BadInput
from service.spec import Spec, SpecError, SpecWarning, dump_spec, load_spec, read_yaml

JOB_PYTHON_VAR = "PLATEAU_JOB_PYTHON"


# ---------------------------------------------------------------------------------------------
# Arguments


def _add_overrides(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", help="auto | mnist | sample | PATH (.npz or Parquet dir/URI)")
    p.add_argument("--workers", type=int, help="number of Ray Train workers (0 = in-process local mode)")
    p.add_argument("--epochs", type=int, help="maximum epochs")
    p.add_argument("--gpu", action="store_true", default=None, help="train on GPUs (one per worker)")
    p.add_argument("--output", help="output directory (default: the spec's, ./results)")
    p.add_argument("--name", help="run name (default: the spec's)")
    p.add_argument("--fresh", action="store_true", help="discard this name's earlier results and checkpoints")
    p.add_argument("--mlflow", metavar="URI",
                   help="log the run (a study: its trials too) in MLflow at URI: a folder, sqlite:///FILE or "
                        "http://HOST:PORT (default: the spec's tracking.mlflow, else MLFLOW_TRACKING_URI)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override any spec field, e.g. --set reduce_lr.patience=2 (repeatable)")


# Shorthand flags and the spec field each sets (a compare spec applies them to its base).
SHORTHANDS = {"data": "data.source", "workers": "scaling.num_workers", "epochs": "training.epochs",
              "gpu": "scaling.use_gpu", "output": "output", "name": "name"}


def overrides_from(args: argparse.Namespace) -> list[str]:
    """The shorthand flags as `--set` overrides, then the `--set`s themselves."""
    out: list[str] = []
    for attr, key in SHORTHANDS.items():
        value = getattr(args, attr, None)
        if value is not None:
            out.append(f"{key}={str(value).lower() if isinstance(value, bool) else value}")
    if getattr(args, "mlflow", None):  # quoted: a URI read as YAML could lose a `#...` or `: `
        out.append(f"tracking.mlflow={json.dumps(args.mlflow)}")
    return out + list(args.overrides or [])


def load_with_tracking(args: argparse.Namespace) -> Spec:
    """The spec with the command line's overrides, and MLFLOW_TRACKING_URI as the tracking URI
    when neither --mlflow nor the spec names one (precedence: --mlflow, the spec, the variable)."""
    overrides = overrides_from(args)
    spec = load_spec(args.spec, overrides)
    uri = os.environ.get(TRACKING_URI_VAR, "").strip()
    if not uri or (spec.tracking is not None and spec.tracking.mlflow is not None):
        return spec
    try:
        return load_spec(args.spec, [*overrides, f"tracking.mlflow={json.dumps(uri)}"])
    except SpecError as exc:
        raise SpecError(f"{TRACKING_URI_VAR}: {str(exc).rpartition('tracking.mlflow: ')[2]}") from None


def _output_flags(p: argparse.ArgumentParser, top: bool) -> None:
    """--verbose and --quiet, before or after the subcommand (after it, they only set when given)."""
    default = False if top else argparse.SUPPRESS
    p.add_argument("--verbose", action="store_true", default=default, help="show TensorFlow and Ray logs")
    p.add_argument("--quiet", action="store_true", default=default,
                   help="print only warnings, errors and the final summary")


def _seconds(text: str) -> float:
    """A flag's number of seconds: 0 or more."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"{text} is not 0 or more seconds")
    return value


def build_parser() -> argparse.ArgumentParser:
    from service import __version__

    parser = argparse.ArgumentParser(
        prog="plateau",
        description="Data-parallel Keras MNIST on Ray with ReduceLROnPlateau and EarlyStopping "
                    "decided from the global validation metrics.",
    )
    parser.add_argument("--version", action="version", version=f"plateau {__version__}")
    _output_flags(parser, top=True)
    flags = argparse.ArgumentParser(add_help=False)
    _output_flags(flags, top=False)
    sub = parser.add_subparsers(dest="command", required=True)

    for name, helptext, spec_help in (
        ("train", "train one spec (default: the seed's model)", "train spec YAML"),
        ("compare", "run a Ray Tune comparison of callback settings", "compare spec YAML"),
        ("run", "run a spec of either kind (the entrypoint jobs use)", "spec YAML"),
    ):
        p = sub.add_parser(name, help=helptext, parents=[flags])
        p.add_argument("spec", nargs="?" if name == "train" else None, help=spec_help)
        p.add_argument("--address", help="Ray cluster to join: 'auto' or HOST:PORT (default: embedded local Ray)")
        _add_overrides(p)
        if name != "train":
            p.add_argument("--quiet-trials", action="store_true",
                           help="a study prints a status line at most every 10 s instead of a line per trial epoch")

    p = sub.add_parser("check", help="what train, compare, run or submit would refuse, without starting anything: "
                                     "the resolved spec, warnings, the data, the run's folder",
                       parents=[flags])
    p.add_argument("spec", help="spec YAML")
    p.add_argument("--address", help="as train/compare/run take it (HOST:PORT or 'auto'), or as submit takes it "
                                     "(http://HOST:8265) with --submit")
    _add_overrides(p)
    p.add_argument("--quiet-trials", action="store_true", help="accepted as compare and run take it; checks nothing")
    p.add_argument("--submit", action="store_true",
                   help="check as 'plateau submit' would: --address is a job server's, the data is read on the cluster")
    p.add_argument("--wait", action="store_true", help="submit's flag (implies --submit)")
    p.add_argument("-f", "--follow", action="store_true", help="submit's flag (implies --submit)")
    p.add_argument("--wait-server", type=_seconds, default=None, metavar="SECONDS",
                   help="submit's flag (implies --submit)")

    p = sub.add_parser("submit", help="submit a spec as a Ray job to a cluster", parents=[flags])
    p.add_argument("spec", help="spec YAML")
    p.add_argument("--address", help="job server, e.g. http://127.0.0.1:8265 (default: RAY_API_SERVER_ADDRESS / RAY_ADDRESS)")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--wait", action="store_true", help="wait for the job to end; exit non-zero if it failed")
    mode.add_argument("-f", "--follow", action="store_true", help="stream the job's logs until it ends")
    p.add_argument("--wait-server", type=_seconds, default=None, metavar="SECONDS",
                   help="wait this long for a job server that is starting (default 60)")
    _add_overrides(p)

    for name, helptext in (("status", "show a job's status"), ("logs", "print a job's logs"),
                           ("stop", "stop a job")):
        p = sub.add_parser(name, help=helptext, parents=[flags])
        p.add_argument("job_id")
        p.add_argument("--address", help="job server (default: RAY_API_SERVER_ADDRESS / RAY_ADDRESS)")
        if name == "logs":
            p.add_argument("-f", "--follow", action="store_true", help="keep streaming until the job ends")
        if name == "status":
            p.add_argument("--json", action="store_true", help="print the status as one JSON object")

    p = sub.add_parser("jobs", help="list this product's jobs on a cluster", parents=[flags])
    p.add_argument("--address", help="job server (default: RAY_API_SERVER_ADDRESS / RAY_ADDRESS)")
    p.add_argument("--json", action="store_true", help="print the jobs as a JSON array")

    p = sub.add_parser("runs", help="list the runs and studies under OUTPUT, newest first", parents=[flags])
    p.add_argument("output", nargs="?", default="results", help="the output folder (default: results)")
    p.add_argument("--json", action="store_true", help="print the rows as a JSON array")
    p = sub.add_parser("show", help="a run's summary and each epoch's decisions in words", parents=[flags])
    p.add_argument("name", help="a run or study name under OUTPUT (or a study's trial, or a folder)")
    p.add_argument("--output", default="results", help="the output folder (default: results)")
    return parser


# ---------------------------------------------------------------------------------------------
# The environment


def data_cache_dir() -> Optional[Path]:
    """Where Keras keeps datasets: KERAS_HOME/datasets when set (None: Keras's default)."""
    keras_home = os.environ.get("KERAS_HOME")
    return Path(keras_home).expanduser() / "datasets" if keras_home else None


def job_server_token() -> Optional[str]:
    """The token Ray 2.60's token auth expects, from where Ray's own tools look for it."""
    if os.environ.get("RAY_AUTH_MODE", "").lower() == "disabled":
        return None
    token = os.environ.get("RAY_AUTH_TOKEN", "").strip()
    if token:
        return token
    candidates = [Path(os.environ["RAY_AUTH_TOKEN_PATH"]).expanduser()] if os.environ.get("RAY_AUTH_TOKEN_PATH") else []
    candidates.append(Path.home() / ".ray" / "auth_token")
    for path in candidates:
        with contextlib.suppress(OSError):
            token = path.read_text().strip()
            if token:
                return token
    return None


def cluster_address(flag: Optional[str]) -> Optional[str]:
    """The Ray cluster train/compare/run join: --address, else RAY_ADDRESS (Ray sets it for a
    job's driver), remembering which of the two it came from for its error messages."""
    from service.cluster import Address

    if flag:
        return Address(flag, Address.FLAG)
    env = os.environ.get("RAY_ADDRESS")
    return Address(env, Address.ENV) if env else None


@contextlib.contextmanager
def _without_ray_address_variables() -> Iterator[None]:
    """Ray's job client lets RAY_API_SERVER_ADDRESS / RAY_ADDRESS override the address it is
    given; the address here is already chosen (--address first), so hide them meanwhile."""
    saved = {k: os.environ.pop(k) for k in ("RAY_API_SERVER_ADDRESS", "RAY_ADDRESS") if k in os.environ}
    try:
        yield
    finally:
        os.environ.update(saved)


@contextlib.contextmanager
def _quiet_warnings() -> Iterator[None]:
    """Spec warnings (legacy names) in one line during the block; other libraries' deprecations
    stay hidden. Python's own format is back after it."""
    plain = warnings.formatwarning

    def short(message: Warning | str, category: type[Warning], *args, **kwargs):
        if issubclass(category, SpecWarning):
            return f"warning: {message}\n"
        return plain(message, category, *args, **kwargs)

    warnings.formatwarning = short
    try:
        yield
    finally:
        warnings.formatwarning = plain


# ---------------------------------------------------------------------------------------------
# Commands


def _warn(spec: Spec) -> None:
    """The spec lint's findings, one `warning: ...` line each on stderr."""
    from service.lint import lint

    for line in lint(spec):
        print(f"warning: {line}", file=sys.stderr, flush=True)


def _run_spec(args: argparse.Namespace, kind: Optional[str], command: str) -> int:
    """train, compare, or run (either, by the spec's `kind`), on the cluster or an embedded Ray."""
    from service.console import say

    if kind is None:
        kind = str(read_yaml(args.spec).get("kind", "train"))
    spec = load_with_tracking(args)
    if spec.kind != kind:
        raise SpecError(f"{args.spec}: kind is {spec.kind!r}; use 'plateau {spec.kind}' or 'plateau run'")
    _warn(spec)
    address = cluster_address(args.address)
    echo = progress.QuietEcho(say) if args.quiet else say
    if kind == "compare":
        from service import compare

        return compare.run(spec, address=address, verbose=args.verbose, fresh=args.fresh,
                           data_cache=data_cache_dir(), echo=echo, quiet_trials=getattr(args, "quiet_trials", False),
                           command=command)
    from service import train

    result = train.run(spec, address=address, verbose=args.verbose, fresh=args.fresh, data_cache=data_cache_dir(),
                       echo=echo, command=command)
    return EXIT_OK if result.ok else EXIT_FAILED


def _check(args: argparse.Namespace) -> int:
    """`plateau check`: what `train`/`compare`/`run` (or, with --submit or submit's flags,
    `submit`) would refuse before starting, the same line and exit 2, without Ray, TensorFlow or
    JAX: the spec and every trial spec, the engine's and MLflow's packages, example buckets, the
    address, the data (read here, as the driver reads it), the run's folder. On stdout: the
    resolved spec, then YAML comments: what it could not check offline, what train would do
    with the run's folder."""
    from service import engines, rundir, runlock
    from service.submitting import (builder_code, check_builders, check_job_server_address, find_project_root,
                                    refuse_placeholder_buckets)

    submitting = bool(args.submit or args.wait or args.follow or args.wait_server is not None)
    spec = load_spec(args.spec, overrides_from(args)) if submitting else load_with_tracking(args)
    skipped: list[str] = []
    trial_specs = [spec]
    study = None
    if spec.kind == "compare":
        study = _study_trials(spec)
        trial_specs = [trial.spec for trial in study]
    check_builders(trial_specs)
    refuse_placeholder_buckets(spec)  # with or without --submit: an example bucket is never usable
    if submitting:
        if any(s.model.build for s in trial_specs):
            builder_code(spec, find_project_root(args.spec))
        check_job_server_address(args.address or os.environ.get("RAY_API_SERVER_ADDRESS")
                                 or os.environ.get("RAY_ADDRESS"))
        sys.stdout.write(dump_spec(spec))
        _warn(spec)
        print("# not checked offline: whether the job server answers, and what the cluster has: its packages "
              "(the engine's, MLflow's), the data, the run's folder and resources are the cluster's")
        return EXIT_OK
    address = cluster_address(args.address)
    output = Path(spec.output) / spec.name
    runlock.check_free(output, also=("trials/*",) if study is not None else ())
    from service import cluster

    if address:
        cluster.check_gcs_address(address)
        if address == "auto":
            skipped.append("which cluster --address auto finds (Ray looks for it as it joins)")
    else:
        cluster.check_no_local_cluster()
    if spec.tracking is not None:
        from service.tracking import check_available

        check_available(spec.tracking)
    engines.check_available(*trial_specs)
    skipped += _check_data(trial_specs, train=study is None, workers_here=not address)
    if any(s.model.build for s in trial_specs):
        skipped.append("what model.build builds, and whether it takes the data's shape (train and compare try it)")
    if study is None:
        if not args.fresh:
            rundir.check_same_spec(spec)
        if not (output / "summary.json").exists() or args.fresh:
            paths = rundir.RunPaths.of(spec)
            rundir.check_could_write(paths.out_dir, paths.storage)
    elif not args.fresh:
        from service.compare.study import count_finished

        count_finished(study)
    sys.stdout.write(dump_spec(spec))
    _warn(spec)
    skipped.append(f"whether {'the cluster at ' + address if address else 'an embedded Ray'} can place the "
                   "workers (its resources)")
    print(f"# not checked offline: {'; '.join(skipped)}")  # YAML comments: stdout stays a spec
    print(f"# {_folder_line(spec, output, study is not None, args.fresh)}")
    return EXIT_OK


def _study_trials(spec: Spec) -> list:
    """Every trial of the study, planned and validated as `compare` would before starting."""
    from service.grid import expand
    from service.compare.plan import plan_workers, with_workers
    from service.seeding import SeedPlan, check_plan

    workers, _ = plan_workers(spec)
    spec = with_workers(spec, workers)
    seeding = SeedPlan.of(spec)
    trials = expand(spec, (Path(spec.output) / spec.name).resolve() / "trials", seeds=list(seeding.seeds))
    check_plan(seeding, len({t.setting.index for t in trials}))
    return trials


def _check_data(specs: list, train: bool, workers_here: bool = False) -> list[str]:
    """Each distinct data source read as the driver reads it (and, for a train run, split into
    its batches and, with `workers_here`, held by every worker on this machine); what could not be
    read offline, in words."""
    from service import data as data_lib

    skipped, seen = [], set()
    for spec in specs:
        layout = data_lib.Layout.of(spec)
        key = (spec.data.source, spec.data.validation)
        if (key, layout) in seen:
            continue
        seen.add((key, layout))
        splits = data_lib.load_offline(*key, cache_dir=data_cache_dir(), layout=layout)
        if splits is None:
            where = data_cache_dir() or data_lib.default_cache_dir()
            skipped.append(f"the data {key[0]} (full MNIST is not in {where} yet: train downloads it"
                           f"{', or uses the bundled sample if it cannot' if key[0] == 'auto' else ''})"
                           if "://" not in key[0] else f"the data at {key[0]} (remote)")
        elif train:
            data_lib.steps_per_epoch(len(splits.x_train), spec.training.batch_size)
            if workers_here:
                data_lib.check_fits(splits, spec.max_workers)
    return list(dict.fromkeys(skipped))


def _folder_line(spec: Spec, output: Path, study: bool, fresh: bool) -> str:
    """What train (compare) would do with the run's (study's) folder, in words."""
    if fresh:
        return f"{output}: {'--fresh discards what it holds; ' if output.exists() else ''}a new run"
    if study:
        return f"{output}: a study; compare reuses the trials already finished there"
    from service.rundir import state_line

    return state_line(spec)


def _job_command(args: argparse.Namespace) -> int:
    from service import jobs

    address = args.address or os.environ.get("RAY_API_SERVER_ADDRESS") or os.environ.get("RAY_ADDRESS")
    token = job_server_token()
    with _without_ray_address_variables():
        if args.command == "submit":
            _warn(load_spec(args.spec, overrides_from(args)))
            wait_server = jobs.WAIT_SERVER_S if args.wait_server is None else args.wait_server
            return jobs.submit(args.spec, address, overrides_from(args), wait=args.wait, follow=args.follow,
                               token=token, python=os.environ.get(JOB_PYTHON_VAR) or jobs.DEFAULT_PYTHON,
                               fresh=args.fresh, wait_server=wait_server)
        if args.command == "status":
            return jobs.status(args.job_id, address, token, as_json=args.json)
        if args.command == "logs":
            return jobs.logs(args.job_id, address, follow=args.follow, token=token)
        if args.command == "stop":
            return jobs.stop(args.job_id, address, token)
        return jobs.list_jobs(address, token, as_json=args.json)


def _index_command(args: argparse.Namespace) -> int:
    """runs and show: read the output folders, no Ray."""
    from service import runs

    if args.command == "show":
        sys.stdout.write(runs.show(runs.find(args.name, Path(args.output))))
        return EXIT_OK
    rows = runs.index(Path(args.output))
    if args.json:
        print(json.dumps(rows, indent=2))
    elif rows:
        print(runs.table(rows))
    else:
        print(f"no runs under {args.output}")
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    if args.quiet and args.verbose:
        print("plateau: --quiet and --verbose contradict each other; give one of them", file=sys.stderr)
        return EXIT_BAD_INPUT
    # The command's own settings (warnings' format, MLflow's) end with it.
    with _quiet_warnings(), compat_mlflow.settings_restored():
        return _command(args, argv)


def _command(args: argparse.Namespace, argv: list[str]) -> int:
    """The command `args` asks for, with its one-line errors and exit codes."""
    if not args.verbose:
        # Set before TensorFlow is first imported (the driver imports it through Ray Train).
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    from service import signals

    try:
        if args.command == "check":
            return _check(args)
        if args.command in ("train", "compare", "run"):
            with signals.interruptible():
                return _run_spec(args, None if args.command == "run" else args.command, shlex.join(["plateau", *argv]))
        if args.command in ("runs", "show"):
            return _index_command(args)
        return _job_command(args)
    except BadInput as exc:
        for line in str(exc).splitlines() or [type(exc).__name__]:
            print(f"plateau: {line}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except signals.Interrupted as exc:
        print(f"plateau: {exc.message}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("plateau: interrupted", file=sys.stderr)
        return signals.EXIT_SIGINT


if __name__ == "__main__":
    sys.exit(main())
