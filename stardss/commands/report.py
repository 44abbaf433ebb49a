"""`stardss report RUN_DIR...`: the runs' results side by side (report.md, PNG plots); reads
results.json files only, loads no job and no model."""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

from ..eval.report import find_curves, find_star_files, load_runs, write_report
from ..eval.results import markdown_table


def run_report(run_dirs: Sequence[str], out: Optional[str] = None,
               star_rows: Optional[Sequence[str]] = None) -> list[Path]:
    """Write the report of run_dirs to `out` (default: ./report), print its table and the
    files written; ReportError (a ValueError) on a folder without results."""
    runs = load_runs(run_dirs)
    written = write_report(runs, out or "report", star_rows=star_rows,
                           star_files=find_star_files(run_dirs),
                           curve_files=find_curves(run_dirs))
    print(markdown_table(runs))
    print()
    for path in written:
        print(path)
    return written
