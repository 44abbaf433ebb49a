"""`stardss`: one console script; every subcommand takes a job YAML plus dotlist overrides."""
from __future__ import annotations

import argparse
import json
import os
import sys
import traceback
from importlib import resources

EXIT_CODES = """exit codes: 0 success; 2 user error (config, data rows, missing paths, no usable
rows, an unreachable Ray address); 1 runtime failure (a remote pool or Ray Train failed)"""


def _demo_job_path() -> str:
    return str(resources.files("stardss.jobs").joinpath("demo.yaml"))


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="stardss", description=__doc__, epilog=EXIT_CODES,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--debug", action="store_true", help="show the Python traceback of a "
                   "failure (also STARDSS_DEBUG=1); accepted after the subcommand too")
    sub = p.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="run the embedded demo end to end (no downloads)")
    demo.add_argument("job", nargs="?", default=None, help="job YAML (default: the packaged demo)")
    demo.add_argument("overrides", nargs="*", help="dotlist overrides, e.g. train.epochs=2")
    demo.add_argument("--out", default=None, help="output folder (default: the job's out_dir)")
    sweep = sub.add_parser("sweep", help="the harm-ratio trade-off figure on the toy world: "
                           "sft / rs / dss at each demo.sweep ratio and harmful shape")
    sweep.add_argument("job", nargs="?", default=None, help="job YAML (default: the packaged "
                       "demo)")
    sweep.add_argument("overrides", nargs="*", help="dotlist overrides, e.g. "
                       "demo.sweep.ratios=[0,0.3]")
    sweep.add_argument("--out", default=None, help="output folder (default: <out_dir>/sweep)")
    for name, text in (("score", "score the training data's STAR trajectories"),
                       ("train", "finetune with the job's loss (sft, rs or dss)"),
                       ("eval", "safety, over-refusal and capability of models, with intervals")):
        cmd = sub.add_parser(name, help=text)
        cmd.add_argument("job", help="job YAML")
        cmd.add_argument("overrides", nargs="*", help="dotlist overrides, e.g. train.lr=1e-4")
        if name == "score":
            cmd.add_argument("--html", default=None, metavar="FILE",
                             help="also write a heatmap page of the trajectories")
        if name == "eval":
            cmd.add_argument("--model", action="append", default=[], metavar="NAME=DIR",
                             help="model folder to evaluate (repeatable); default: "
                                  "model.name_or_path")
    report = sub.add_parser("report", help="compare runs' results: report.md and PNG plots")
    report.add_argument("run_dirs", nargs="+", metavar="RUN_DIR",
                        help="run folder (<out_dir>, its eval/, or a folder with results.json)")
    report.add_argument("--out", default=None, metavar="DIR",
                        help="where report.md and the plots go (default: ./report)")
    report.add_argument("--star", nargs="+", default=None, metavar="ROW_ID",
                        help="STAR rows to plot (default: the few whose P(safe) dips lowest)")
    check = sub.add_parser("check", help="would `stardss train` start? validate the config, "
                           "data, model and guardrails in seconds, training nothing")
    check.add_argument("job", help="job YAML")
    check.add_argument("overrides", nargs="*", help="dotlist overrides, e.g. train.lr=1e-4")
    check.add_argument("--rows", type=int, default=100, metavar="N",
                       help="records validated per data source (default: 100)")
    build = sub.add_parser("build-data", help="build attack / mixture JSONL files from your "
                           "own files (a spec's `build` section); prints rows and sha256 each")
    build.add_argument("job", metavar="SPEC", help="build spec YAML, or a job file with a "
                       "`build` section")
    build.add_argument("overrides", nargs="*", help="dotlist overrides, e.g. "
                       "build.outputs.0.harm_ratio=0.3 seed=1")
    _add_cluster_commands(sub)
    return p


CLUSTER_COMMANDS = ("submit", "status", "logs", "stop")


def _add_cluster_commands(sub) -> None:
    """submit / status / logs / stop: jobs on a Ray cluster via its Jobs API (cluster/submit.py)."""
    address = dict(default=None, metavar="URL", help="the head's Jobs API, e.g. http://HEAD:8265 "
                   "(default: $RAY_API_SERVER_ADDRESS, then $RAY_ADDRESS)")
    cmd = sub.add_parser(
        "submit", help="run a job on a Ray cluster through its Jobs API",
        description="Check the job here (`stardss check`; --no-check skips it), upload the "
                    "working dir and run `python -m stardss COMMAND JOB ...` with the cluster's "
                    "Python (submit.python). A job that failed part-way: submit it again with "
                    "train.resume=auto to continue from its last checkpoint in out_dir.")
    cmd.add_argument("job", help="job YAML, inside the working dir")
    cmd.add_argument("overrides", nargs="*", help="dotlist overrides, e.g. train.lr=1e-4")
    cmd.add_argument("--address", **address)
    cmd.add_argument("--command", dest="run", default="train",
                     choices=("train", "score", "eval", "demo"),
                     help="what to run (default: train)")
    cmd.add_argument("--no-wait", action="store_true", help="print the job id and return")
    cmd.add_argument("--no-check", action="store_true", help="upload without running `stardss "
                     "check` here first (it checks what this machine can see: config, data rows, "
                     "model/tokenizer, guardrails; absolute paths missing here are left to the "
                     "cluster)")
    cmd.add_argument("--secret", action="append", default=[], metavar="NAME",
                     help="environment variable passed to the job by name (repeatable)")
    cmd.add_argument("--working-dir", default=None, metavar="DIR",
                     help="folder uploaded as the job's working dir (default: the current one)")
    cmd.add_argument("--submission-id", default=None, metavar="ID",
                     help="job id (default: stardss-<job name>-<time>-<random>)")
    timeout = dict(type=float, default=None, metavar="S")
    cmd.add_argument("--timeout", **timeout, help="give up following after S seconds "
                     "(the job keeps running); default: until it ends")
    for name, text in (("status", "a submitted job's status and message (JSON)"),
                       ("logs", "a submitted job's logs"),
                       ("stop", "stop a submitted job and wait until it has stopped")):
        cmd = sub.add_parser(name, help=text)
        cmd.add_argument("job_id", help="the id `stardss submit` printed")
        cmd.add_argument("--address", **address)
        if name == "logs":
            cmd.add_argument("--follow", action="store_true", help="follow until the job ends")
        if name != "status":
            cmd.add_argument("--timeout", **timeout, help="longest wait in seconds (default: "
                             "logs --follow until the job ends, stop 120)")


DEBUG_ENV = "STARDSS_DEBUG"


def _debug(argv: list[str]) -> tuple[bool, list[str]]:
    """`--debug` anywhere on the line (before or after the subcommand), or STARDSS_DEBUG=1:
    show the traceback of a failure. Taken out before parsing so every subcommand accepts it."""
    on = "--debug" in argv or os.environ.get(DEBUG_ENV, "").strip().lower() in ("1", "true",
                                                                               "yes", "on")
    return on, [a for a in argv if a != "--debug"]


def main(argv=None) -> int:
    """Exit codes: 0 success, 2 user error (config, data, paths, no usable rows, an
    unreachable Ray address), 1 runtime failure; stardss/errors.py tells them apart."""
    debug, argv = _debug(list(sys.argv[1:] if argv is None else argv))
    parser = _parser()
    args, extra = parser.parse_known_args(argv)
    # Overrides may also follow options (`submit JOB --command score k=v`): argparse leaves
    # positionals after an option unparsed.
    if extra and (getattr(args, "overrides", None) is None
                  or any(x.startswith("-") or "=" not in x for x in extra)):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if extra:
        args.overrides = [*args.overrides, *extra]
    try:
        return _run(args)
    except KeyboardInterrupt:
        if debug:
            raise
        print("stardss: interrupted", file=sys.stderr)
        return 130
    except Exception as err:  # every failure ends in one line (or the traceback, --debug)
        from .errors import exit_code_of, one_line

        if debug:
            traceback.print_exc()
        else:
            # A bug or a failed run (not the user's input): say where the traceback is.
            hint = "" if exit_code_of(err) == 2 else " (--debug shows the traceback)"
            print(one_line(err) + hint, file=sys.stderr)
        return exit_code_of(err)


def _submit_check(job, command: str) -> int:
    """`stardss check` here before `stardss submit` uploads (its lines on stderr: stdout carries
    the job id and logs); cluster/submit.py runs it in the working dir, the job as the cluster
    loads it."""
    from .commands.check import run_check

    return run_check(job, echo=lambda line: print(line, file=sys.stderr), for_cluster=True,
                     command=command)


def _run(args) -> int:
    if args.command in CLUSTER_COMMANDS:
        from .cluster.submit import run_cli

        wanted = args.command == "submit" and not args.no_check
        return run_cli(args, check=_submit_check if wanted else None)
    if args.command == "build-data":  # reads only the spec's `seed` and `build`
        from .commands.build_data import run_build_data

        print(json.dumps(run_build_data(args.job, args.overrides), indent=1))
        return 0
    if args.command == "report":  # reads results files only: no job to load
        from .commands.report import run_report

        run_report(args.run_dirs, args.out, args.star)
        return 0
    from .config import JobConfig, load_job
    from .config.validate import COMMAND_NEEDS, validate_for
    from .demo.config import DemoJobConfig

    job = load_job(args.job or _demo_job_path(), args.overrides,
                   schema=DemoJobConfig if args.command in ("demo", "sweep") else JobConfig)
    if args.command in COMMAND_NEEDS:  # the lists this command reads are not empty
        validate_for(job, args.command)
    if args.command == "check":
        from .commands.check import run_check

        return run_check(job, rows=args.rows)
    if args.command == "demo":
        from .commands.demo import run_demo

        run_demo(job, args.out)
        return 0
    if args.command == "sweep":
        from .commands.sweep import run_sweep

        run_sweep(job, args.out)
        return 0
    if args.command == "train":
        from .commands.train import run_train

        out = run_train(job)
    elif args.command == "score":
        from .commands.score import run_score

        out = run_score(job, html=args.html)
    else:
        from .commands.eval import run_eval
        from .eval.results import headline

        models = dict(m.split("=", 1) if "=" in m else (m, m) for m in args.model)
        results = run_eval(job, models or {"model": job.model.name_or_path})
        # The table is printed by run_eval; the summary is each model's rates by row/metric.
        out = {n: headline(r) for n, r in results.items()}
    print(json.dumps(out, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
