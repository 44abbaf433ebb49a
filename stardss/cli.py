"""`stardss`: one console script; every subcommand takes a job YAML plus dotlist overrides."""
from __future__ import annotations

import argparse
import json
import sys
from importlib import resources


def _demo_job_path() -> str:
    return str(resources.files("stardss.jobs").joinpath("demo.yaml"))


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="stardss", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="run the embedded demo end to end (no downloads)")
    demo.add_argument("job", nargs="?", default=None, help="job YAML (default: the packaged demo)")
    demo.add_argument("overrides", nargs="*", help="dotlist overrides, e.g. train.epochs=2")
    demo.add_argument("--out", default=None, help="output folder (default: the job's out_dir)")
    for name, text in (("score", "score the training data's STAR trajectories"),
                       ("train", "finetune with the job's loss (sft, rs or dss)"),
                       ("eval", "safety rate and capability of a model")):
        cmd = sub.add_parser(name, help=text)
        cmd.add_argument("job", help="job YAML")
        cmd.add_argument("overrides", nargs="*", help="dotlist overrides, e.g. train.lr=1e-4")
        if name == "score":
            cmd.add_argument("--html", default=None, metavar="FILE",
                             help="also write a heatmap page of the trajectories")
        if name == "eval":
            cmd.add_argument("--model", action="append", default=[], metavar="NAME=DIR",
                             help="model folder to evaluate (repeatable); default: model.name_or_path")
    return p


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    from .config import ConfigError, load_job

    try:
        job = load_job(args.job or _demo_job_path(), args.overrides)
    except ConfigError as err:
        print(f"stardss: config error: {err}", file=sys.stderr)
        return 2
    if args.command == "demo":
        from .demo import run_demo

        run_demo(job, args.out)
        return 0
    from . import run

    if args.command == "train":
        out = run.run_train(job)
    elif args.command == "score":
        out = run.run_score(job, html=args.html)
    else:
        models = dict(m.split("=", 1) if "=" in m else (m, m) for m in args.model)
        out = {n: {k: v for k, v in r.items() if k != "samples"}
               for n, r in run.run_eval(job, models or {"model": job.model.name_or_path}).items()}
    print(json.dumps(out, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
