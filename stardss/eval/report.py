"""`stardss report`: results of several runs side by side, as people read them: report.md (one
table, model x row x metric with intervals) and PNG plots (safety vs capability, per-category
safety, STAR trajectories of chosen rows).

A run folder is what `stardss eval` writes (`<out_dir>/eval/<model>/results.json`); its eval/
folder, or a folder that holds results.json itself, may be given instead. Trajectories come
from the runs' star.jsonl files (stardss.star.score.write_star).
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Optional, Sequence

from ..errors import UserError
from . import plots
from .results import CAPABILITY_METRICS, ResultsError, interval, markdown_table, read_results

STAR_DEFAULT_ROWS = 4


class ReportError(UserError, ValueError):
    """A run folder without results, an unreadable star.jsonl, an unknown row."""


def _run_root(folder: Path) -> Path:
    """The run folder of a folder given: itself, or above its eval/ (or eval/<model>/)."""
    if folder.name == "eval":
        return folder.parent
    if folder.parent.name == "eval" and (folder / "results.json").is_file():
        return folder.parent.parent
    return folder


def _results_files(folder: Path) -> list[tuple[str, Path]]:
    """(model name, results.json) of every model under a folder given."""
    if not folder.is_dir():
        raise ReportError(f"{folder}: no such folder")
    evals = folder / "eval"
    if not evals.is_dir():
        if (folder / "results.json").is_file():
            return [(folder.name, folder / "results.json")]
        evals = folder
    found = []
    for sub in sorted(p for p in evals.iterdir() if p.is_dir()):
        if (sub / "results.json").is_file():
            found.append((sub.name, sub / "results.json"))
        elif (sub / "samples.jsonl").is_file():  # an evaluation that did not finish
            raise ReportError(f"{sub}: samples.jsonl but no results.json")
    if not found:
        raise ReportError(f"{folder}: no results.json (looked in {folder}, {folder}/eval/*, "
                          f"{folder}/*)")
    return found


def load_runs(run_dirs: Sequence) -> dict[str, dict]:
    """Model label -> results of every `<run>/eval/<model>/results.json` under the folders
    given. The label is the model's name, or `<run>/<model>` where names collide (the
    folder's path where even those do). Each results gets "source": its results.json."""
    found = []  # (model, run, path)
    for d in run_dirs:
        d = Path(d)
        for model, path in _results_files(d):
            if all(path.resolve() != p.resolve() for _, _, p in found):  # a folder given twice
                found.append((model, _run_root(d).resolve().name, path))
    labels = [m for m, _, _ in found]
    if len(set(labels)) < len(labels):
        labels = [m if labels.count(m) == 1 else f"{r}/{m}" for m, r, _ in found]
    if len(set(labels)) < len(labels):
        labels = [lab if labels.count(lab) == 1 else str(p.parent)
                  for lab, (_, _, p) in zip(labels, found)]
    runs = {}
    for label, (_, _, path) in zip(labels, found):
        try:
            results = read_results(path)
        except ResultsError as err:
            raise ReportError(str(err)) from None
        if not isinstance(results, dict) or not isinstance(results.get("rows"), dict):
            raise ReportError(f"{path}: no 'rows' (not a stardss results.json)")
        runs[label] = {**results, "source": str(path)}
    return runs


def _find(run_dirs: Sequence, name: str) -> list[Path]:
    """Every file called `name` under the runs of the folders given, run by run, in path
    order, each once."""
    files: list[Path] = []
    for d in run_dirs:
        for f in sorted(_run_root(Path(d)).rglob(name)):
            if f not in files:
                files.append(f)
    return files


def find_star_files(run_dirs: Sequence) -> list[Path]:
    """Every star.jsonl under the runs of the folders given."""
    return _find(run_dirs, "star.jsonl")


def find_curves(run_dirs: Sequence) -> list[Path]:
    """Every safety_over_training.jsonl (eval.during_training) under the runs given."""
    return _find(run_dirs, "safety_over_training.jsonl")


def read_curves(files: Sequence[Path]) -> list[dict]:
    """One curve per (run folder, row): {label, steps, rate, lo, hi}; a file without
    records (no snapshot reached) gives none. A bad line is an error naming file:line."""
    curves: dict[str, dict] = {}
    for path in files:
        for n, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
            try:
                record = json.loads(line)
                rows, step = record["rows"], int(record["step"])
            except (ValueError, KeyError, TypeError) as err:
                raise ReportError(f"{path}:{n}: not a safety-over-training record "
                                  f"({err})") from None
            for row, r in rows.items():
                c = curves.setdefault(f"{path.parent.name}/{row}", {
                    "label": f"{path.parent.name}/{row}", "steps": [], "rate": [], "lo": [],
                    "hi": []})
                c["steps"].append(step)
                for k in ("rate", "lo", "hi"):
                    c[k].append(r[k])
    return list(curves.values())


def read_star(path: Path) -> list[dict]:
    """The records of a star.jsonl: {id, prompt, response, cuts, trajectory, ...}."""
    records = []
    with open(path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                r = json.loads(line)
            except json.JSONDecodeError as err:
                raise ReportError(f"{path}:{line_no}: not JSON ({err.msg})") from None
            missing = [k for k in ("id", "cuts", "trajectory") if k not in r]
            if missing:
                raise ReportError(f"{path}:{line_no}: a STAR record without {', '.join(missing)}")
            records.append(r)
    return records


def pick_trajectories(star_files: Sequence[Path], star_rows: Optional[Sequence[str]]) -> list:
    """The chosen rows' records (the first star.jsonl holding each id); by default the
    STAR_DEFAULT_ROWS rows of the first file whose trajectories dip lowest."""
    if not star_files:
        if star_rows:
            raise ReportError(f"STAR rows {', '.join(star_rows)} asked for, but the runs have no "
                              "star.jsonl")
        return []
    if not star_rows:
        records = [r for r in read_star(star_files[0]) if r["trajectory"]]
        return sorted(records, key=lambda r: min(r["trajectory"]))[:STAR_DEFAULT_ROWS]
    by_id: dict[str, dict] = {}
    for f in star_files:
        for r in read_star(f):
            by_id.setdefault(r["id"], r)
    missing = [i for i in star_rows if i not in by_id]
    if missing:
        raise ReportError(f"STAR row {missing[0]!r} is in no star.jsonl of the runs "
                          f"({', '.join(map(str, star_files))})")
    return [by_id[i] for i in star_rows]


def _headline_metric(entry: dict) -> Optional[dict]:
    name = CAPABILITY_METRICS[entry["task"]][0]
    return entry["metrics"].get(name) or next(iter(entry["metrics"].values()), None)


def _capability(results: dict) -> Optional[dict]:
    """{k, n, rate, lo, hi, rows}: the headline capability metric pooled over the capability
    rows (a mean over their items, so its Wilson interval stays exact)."""
    picked = {row: _headline_metric(e) for row, e in results["rows"].items()
              if e["task"] in CAPABILITY_METRICS}
    picked = {row: m for row, m in picked.items() if m is not None and m["n"]}
    if not picked:
        return None
    pooled = interval(sum(m["k"] for m in picked.values()), sum(m["n"] for m in picked.values()))
    return {**pooled, "rows": list(picked), "metrics": sorted({m["metric"] for m in
                                                                 picked.values()})}


def _safety_metric(entry: dict) -> dict:
    """The row's first judge's safety rate (judges are in the job's order)."""
    return next(iter(entry["metrics"].values()))


def _safe_name(row: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", row)


def _safety_rows(runs: dict[str, dict], chosen: Optional[Sequence[str]]) -> list[str]:
    rows = list(dict.fromkeys(row for r in runs.values() for row, e in r["rows"].items()
                              if e["task"] == "safety"))
    for row in chosen or ():
        if row not in rows:
            raise ReportError(f"safety row {row!r} is in no results (safety rows: "
                              f"{', '.join(rows) or 'none'})")
    return list(chosen) if chosen else rows


def _plot_safety_vs_capability(runs, rows, out: Path) -> Optional[Path]:
    points, judges, cap_rows, cap_metrics = [], set(), [], set()
    for label, results in runs.items():
        cap = _capability(results)
        if cap is None:
            continue
        cap_rows += [r for r in cap["rows"] if r not in cap_rows]
        cap_metrics.update(cap["metrics"])
        for row in rows:
            entry = results["rows"].get(row)
            if entry is None or not entry["metrics"]:
                continue
            m = _safety_metric(entry)
            if m["rate"] is None:
                continue
            judges.add(m["judge"])
            points.append({"model": label, "row": row, "x": cap["rate"], "x_lo": cap["lo"],
                           "x_hi": cap["hi"], "y": m["rate"], "y_lo": m["lo"], "y_hi": m["hi"]})
    if not points:
        return None
    xlabel = f"capability: {' / '.join(sorted(cap_metrics))} over {', '.join(cap_rows)}"
    ylabel = (f"safety rate (judge {next(iter(judges))})" if len(judges) == 1
              else "safety rate (first judge of each row)")
    return plots.safety_vs_capability(points, out / "safety_vs_capability.png", xlabel, ylabel)


def _plot_categories(runs, rows, out: Path) -> list[Path]:
    written = []
    for row in rows:
        per_model, judges = {}, set()
        for label, results in runs.items():
            entry = results["rows"].get(row)
            m = _safety_metric(entry) if entry and entry["metrics"] else None
            if m and m.get("categories"):
                per_model[label] = {c: v for c, v in m["categories"].items()
                                    if v["rate"] is not None}
                judges.add(m["judge"])
        if per_model:
            ylabel = (f"safety rate (judge {next(iter(judges))})" if len(judges) == 1
                      else "safety rate (first judge)")
            written.append(plots.category_bars(row, per_model,
                                               out / f"categories_{_safe_name(row)}.png", ylabel))
    return written


def _markdown(runs, written: list[Path], notes: list[str]) -> str:
    lines = ["# stardss report", "", "## Models", ""]
    lines += [f"- **{label}**: `{r['source']}`" for label, r in runs.items()]
    lines += ["", "## Results", "",
              "Rates with their 95 % Wilson intervals; unparseable and failed verdicts count "
              "against the model (not safe, refused) and are noted next to n.", "",
              markdown_table(runs)]
    agreement = [f"| {label} | {row} | {pair.replace('|', ' vs ')} | "
                 f"{'n/a' if k is None or k != k else f'{k:.3f}'} |"  # None / NaN: undefined
                 for label, r in runs.items() for row, e in r["rows"].items()
                 for pair, k in e.get("agreement", {}).items()]
    if agreement:
        lines += ["", "## Judge agreement (Cohen's kappa)", "", "| model | row | judges | kappa |",
                  "|---|---|---|---|", *agreement]
    warnings = [f"- {label}: {w}" for label, r in runs.items() for w in r.get("warnings", [])]
    if warnings:
        lines += ["", "## Warnings", "", *warnings]
    lines += ["", "## Plots", ""]
    for p in written:  # a blank line between images: each its own paragraph
        lines += [f"![{p.stem}]({p.name})", ""]
    lines += [f"- {n}" for n in notes]
    return "\n".join(lines) + "\n"


def write_report(runs: dict[str, dict], out_dir, star_rows: Optional[Sequence[str]] = None,
                 star_files: Sequence = (), safety_rows: Optional[Sequence[str]] = None,
                 curve_files: Sequence = ()) -> list[Path]:
    """report.md and the PNG plots of runs (load_runs) in out_dir; returns the files written
    (report.md last). star_files: the runs' star.jsonl (find_star_files); star_rows: their row
    ids to plot (default: the lowest-dipping few); safety_rows: the safety rows plotted against
    capability (default: every safety row); curve_files: safety_over_training.jsonl files
    (find_curves) drawn as safety over training."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows = _safety_rows(runs, safety_rows)
    written, notes = [], []
    scatter = _plot_safety_vs_capability(runs, rows, out)
    if scatter:
        written.append(scatter)
    else:
        notes.append("no safety vs capability plot: no model has both a safety row and a "
                     "capability (answer / choice) row")
    written += _plot_categories(runs, rows, out)
    picked = pick_trajectories([Path(f) for f in star_files], star_rows)
    if picked:
        written.append(plots.star_trajectories(
            [{"label": r["id"], "p_safe": r["trajectory"]} for r in picked],
            out / "star_trajectories.png"))
    else:
        notes.append("no STAR trajectories: the runs have no star.jsonl")
    curves = read_curves([Path(f) for f in curve_files])
    if curves:
        written.append(plots.safety_over_training(curves, out / "safety_over_training.png"))
    report = out / "report.md"
    report.write_text(_markdown(runs, written, notes), encoding="utf-8")
    return [*written, report]
