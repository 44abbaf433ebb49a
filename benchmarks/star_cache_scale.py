"""Benchmark: the STAR cache at 1M rows, against the implementation it replaced, in one run.

Synthetic rows of a realistic shape (prompt ~50 characters, response 150-250, 3-8 cuts, one
guardrail; the texts are generated as they are asked for, so they cost the process nothing)
go through what `stardss train` / `stardss score` do with the cache:

    write     store_scored in batches of 1000 rows, a flush every 10k rows (100 parts), then
              compact() as the Scorer does past 64 parts
    open      StarCache(root): read every part
    lookup    split_rows over every row plus reading each served entry (what Scorer.records
              does); for the baseline split_cached, its only lookup
    memory    the driver's RSS after open and at its peak during the lookup, above the RSS
              before open (a fresh process per implementation and phase)
    seconds   wall and CPU (process_time): on a shared machine the CPU seconds are the steadier
    stream    a streaming run's flushes: 100k rows flushed every 8 rows (one step), part files
              left on disk, and what opening them costs

The baseline is stardss/star/cache.py at commit BASELINE (the dict of Python objects), loaded
from git into this process under stardss.star, so both run on the same data, machine and
moment. Prints ONE JSON line (~3 min). Run:
    .venv/bin/python benchmarks/star_cache_scale.py [--rows 1000000] [--baseline-ref REF]
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

BASELINE = "bdb20a9f02a8ed90b2dc6b802f35de3a56b49370"
"""The last commit with the dict-of-objects cache (the implementation before issue 16)."""
GUARDS = ["bench-guard@rev1|template:abc|safe/unsafe"]


def _impl(name: str, ref: str):
    """stardss.star.cache itself, or the baseline's source from git as a sibling module."""
    if name == "new":
        import stardss.star.cache as mod

        return mod
    src = subprocess.run(["git", "-C", ROOT, "show", f"{ref}:stardss/star/cache.py"],
                         capture_output=True, text=True, check=True).stdout
    spec = importlib.util.spec_from_loader("stardss.star._baseline_cache", loader=None)
    mod = importlib.util.module_from_spec(spec)
    mod.__package__ = "stardss.star"
    sys.modules[spec.name] = mod
    exec(compile(src, f"{ref[:8]}:stardss/star/cache.py", "exec"), mod.__dict__)
    return mod


def _row(i: int):
    prompt = f"prompt {i}: how would I do thing number {i} safely?"
    response = ("word " * (30 + i % 20)) + str(i)
    n = 3 + i % 6
    cuts = sorted({int(len(response) * (j + 1) / n) for j in range(n)})
    return prompt, response, cuts


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1e6


def _write(mod, root: str, rows: int, flush_rows: int, batch: int) -> dict:
    import numpy as np

    chunk_fp = mod.chunk_fingerprint("words", 8)
    t, cpu = time.perf_counter(), time.process_time()
    with mod.StarCache(root) as cache:
        for start in range(0, rows, batch):
            scored = {}
            for i in range(start, min(rows, start + batch)):
                p, r, cuts = _row(i)
                scored[str(i)] = (p, r, cuts, np.linspace(0.05, 0.95, len(cuts))[None] - i * 1e-9)
            mod.store_scored(cache, GUARDS, chunk_fp, scored)
            if (start + batch) % flush_rows == 0:
                cache.flush()
    write_s, write_cpu = time.perf_counter() - t, time.process_time() - cpu
    parts = len(cache.part_files())
    t = time.perf_counter()
    if parts > 64:
        cache.compact()
    return {"write_s": write_s, "write_cpu_s": write_cpu, "parts_written": parts,
            "compact_s": time.perf_counter() - t, "parts_after": len(cache.part_files())}


def _read(mod, root: str, rows: int) -> dict:
    chunk_fp = mod.chunk_fingerprint("words", 8)
    before = _rss_mb()
    t, cpu = time.perf_counter(), time.process_time()
    cache = mod.StarCache(root)
    open_s, open_cpu = time.perf_counter() - t, time.process_time() - cpu
    open_mb = _rss_mb() - before
    items = ((str(i), *_row(i)) for i in range(rows))
    t, cpu = time.perf_counter(), time.process_time()
    if hasattr(mod, "split_rows"):  # the streaming path Scorer.records takes
        split = mod.split_rows(cache, GUARDS, chunk_fp, items)
        served, todo = 0, len(split.todo)
        for _ in split.entries():
            served += 1
    else:
        got, todo = mod.split_cached(cache, GUARDS, chunk_fp, items)
        served, todo = len(got), len(todo)
    lookup_s, lookup_cpu = time.perf_counter() - t, time.process_time() - cpu
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e3  # KB on Linux
    return {"open_s": open_s, "open_cpu_s": open_cpu, "lookup_s": lookup_s,
            "lookup_cpu_s": lookup_cpu, "served": served, "missed": todo,
            "open_rss_mb": open_mb, "lookup_peak_rss_mb": peak - before,
            "bytes_per_row_held": open_mb * 1e6 / rows}


def _stream(mod, root: str, rows: int) -> dict:
    import numpy as np

    chunk_fp = mod.chunk_fingerprint("words", 8)
    t = time.perf_counter()
    with mod.StarCache(root) as cache:
        for i in range(rows):
            p, r, cuts = _row(i)
            scored = {str(i): (p, r, cuts, np.full(len(cuts), 0.5))}
            mod.store_scored(cache, GUARDS, chunk_fp, scored)
            if i % 8 == 7:
                cache.flush()
    write_s = time.perf_counter() - t
    t = time.perf_counter()
    n = len(mod.StarCache(root))
    return {"flush_every_8_s": write_s, "parts": len(cache.part_files()),
            "reopen_s": time.perf_counter() - t, "entries": n}


def _child(args) -> None:
    mod = _impl(args.impl, args.baseline_ref)
    phase = {"write": lambda: _write(mod, args.root, args.rows, 10_000, 1000),
             "read": lambda: _read(mod, args.root, args.rows),
             "stream": lambda: _stream(mod, args.root, args.stream_rows)}[args.phase]
    print(json.dumps(phase()))


def _run(impl: str, phase: str, root: str, args) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), "--child", "--impl", impl, "--phase",
           phase, "--root", root, "--rows", str(args.rows), "--stream-rows",
           str(args.stream_rows), "--baseline-ref", args.baseline_ref]
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"{impl} {phase} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--stream-rows", type=int, default=100_000)
    ap.add_argument("--baseline-ref", default=BASELINE)
    ap.add_argument("--child", action="store_true")
    ap.add_argument("--impl", choices=["new", "baseline"], default="new")
    ap.add_argument("--phase", default="read")
    ap.add_argument("--root")
    args = ap.parse_args()
    if args.child:
        return _child(args)
    result = {"rows": args.rows, "cuts_per_row": "3-8", "guards": len(GUARDS),
              "baseline": f"stardss/star/cache.py@{args.baseline_ref[:10]}"}
    with tempfile.TemporaryDirectory() as tmp:
        for impl in ("baseline", "new"):
            root, sroot = os.path.join(tmp, impl), os.path.join(tmp, impl + "-stream")
            r = {**_run(impl, "write", root, args), **_run(impl, "read", root, args)}
            r["stream"] = _run(impl, "stream", sroot, args)
            result[impl] = {k: round(v, 3) if isinstance(v, float) else v for k, v in r.items()}
            result[impl]["stream"] = {k: round(v, 3) if isinstance(v, float) else v
                                      for k, v in r["stream"].items()}
    b, n = result["baseline"], result["new"]
    if b["served"] != n["served"] or n["missed"] != 0:
        raise SystemExit(f"the implementations disagree: {b} vs {n}")
    result["ratios"] = {  # new / baseline; CPU seconds too: the machine is shared and noisy
        **{k: round(n[k] / b[k], 3) for k in ("write_cpu_s", "open_s", "open_cpu_s", "lookup_s",
                                               "lookup_cpu_s")},
        "open_and_lookup_s": round((n["open_s"] + n["lookup_s"]) / (b["open_s"] + b["lookup_s"]),
                                   3),
        "open_rss": round(n["open_rss_mb"] / b["open_rss_mb"], 3),
        "lookup_peak_rss": round(n["lookup_peak_rss_mb"] / b["lookup_peak_rss_mb"], 3),
        "stream_parts": round(n["stream"]["parts"] / b["stream"]["parts"], 3),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
