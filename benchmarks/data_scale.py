"""Benchmark: the data path at scale (data/ingest.py, data/shards.py, train/feed.ShardSteps).

1. `driver_bytes_per_row`: the driver's peak RSS growth (ru_maxrss, after Ray, imports and the
   tokenizer are up) per row for `stardss train`'s data step (prepare_training_data: ingestion
   in Ray tasks, shards, the mixture as numpy), at 20k and 200k synthetic rows of 40-160 words,
   each in a fresh driver process; the larger of the two is the key (goal <= 1 KB, flat).
   Baseline: the in-driver path (load_training_data, rows as Python objects) at 20k rows.
2. `tokenize_speedup_2_vs_1`: wall time of ingesting 30k rows as 1 task vs 2 tasks (one CPU
   each, a 2-CPU local Ray; fresh shard folders; goal >= 1.7). With --ray-data, against it
   Ray Data's read_json + map_batches with 2 one-CPU actors doing the same per-row work and
   writing nothing (`ray_data_over_tasks_2` > 1: the plain tasks are faster).
3. What a Train worker holds: the pickled ShardSteps it receives (per dataset row), and in a
   fresh process the anonymous-memory growth (RssAnon: the mapped shard pages are file cache,
   not the worker's) per row it trains over 2000 steps, after its first step (imports, the
   shard set's maps); against the pickled row table TableSteps shipped before (per row).
   Each driver measurement warms up on 200 rows first (imports, first task submission), so
   the growth is what the rows cost.

Prints ONE JSON line (~4 min on 2 cores). Run: .venv/bin/python benchmarks/data_scale.py
[--quick]  (--quick: 5k / 20k rows)
"""
from __future__ import annotations

import argparse
import json
import os
import pickle
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("RAY_ADDRESS", "local")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

WORDS = ("the a model answer safe harm help question because which would could should data "
         "train token weight guard reference policy step batch chemistry recipe story poem "
         "history river mountain number seven twelve alpha omega").split()


def _peak_kb() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def _anon_kb() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("RssAnon:"):
                return int(line.split()[1])
    return 0


def write_rows(path: Path, n: int, seed: int = 0) -> None:
    rng = random.Random(seed)
    with open(path, "w") as f:
        for i in range(n):
            prompt = " ".join(rng.choices(WORDS, k=rng.randint(8, 30)))
            response = " ".join(rng.choices(WORDS, k=rng.randint(40, 160)))
            f.write(json.dumps({"id": f"r{i}", "prompt": prompt, "response": response}) + "\n")


def _job(work: Path, data: Path):
    from stardss.config import load_job

    return load_job("jobs/demo.yaml", [f"model.name_or_path={work / 'tok'}",
                                       f"data.sources=[{{path: {data}}}]", "data.max_length=512",
                                       f"out_dir={work / 'out'}", "loss.kind=sft"])


def driver(work: Path, data: Path, mode: str) -> dict:
    """One measurement in this (fresh) process: peak RSS growth of the data step."""
    import ray

    from stardss.data.load import load_training_data, prepare_training_data
    from stardss.data.quarantine import BadRowSink
    from stardss.data.tokenizer import load_tokenizer

    job = _job(work, data)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    tok = load_tokenizer(str(work / "tok"))
    # warm-up on 200 rows: the imports and the first task submission are not per row
    small = work / f"warm-{data.stem}-{mode}.jsonl"
    with open(data) as src, open(small, "w") as dst:
        dst.writelines(line for _, line in zip(range(200), src))
    warm = _job(work, small)
    if mode == "sharded":
        prepare_training_data(warm.data, warm.model, str(work / "tok"), work / "warm-run",
                              seed=0, shard_root=work / f"warm-shards-{time.time_ns()}")
    else:
        with BadRowSink("error") as sink:
            load_training_data(warm.data, tok, sink, seed=0)
    before = _peak_kb()
    started = time.perf_counter()
    if mode == "sharded":
        _, d = prepare_training_data(job.data, job.model, str(work / "tok"),
                                     work / f"run-{data.stem}", seed=0,
                                     shard_root=work / f"shards-{data.stem}-{time.time_ns()}")
        n = len(d.positions)
        parts = len(d.shards.parts)
    else:
        with BadRowSink("error") as sink:
            d = load_training_data(job.data, tok, sink, seed=0)
        n, parts = len(d.encoded), 0
    seconds = time.perf_counter() - started
    grown = (_peak_kb() - before) * 1024
    ray.shutdown()
    return {"rows": n, "peak_growth_bytes": grown, "bytes_per_row": grown / n,
            "seconds": seconds, "tasks": parts}


def speedup(work: Path, data: Path, with_ray_data: bool = False) -> dict:
    """1 task vs 2 tasks over the same file (one CPU each); `with_ray_data`: and Ray Data's
    map_batches with 2 actors."""
    import ray

    from stardss.data.ingest import TokenizerRef, ingest
    from stardss.data.tokenizer import load_tokenizer, tokenizer_fingerprint

    job = _job(work, data)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    fp = tokenizer_fingerprint(load_tokenizer(str(work / "tok")))
    ref = TokenizerRef(str(work / "tok"))
    size = data.stat().st_size
    # warm both worker processes (imports, tokenizer load): not what is compared
    ingest(job.data.sources, ref, fp, 512, work / "warm", seed=0, stop_at_bad=True,
           parallel=True, target_bytes=size // 2 + 1)
    times = {}
    for tasks in (1, 2, 1, 2):
        root = work / f"speed-{tasks}-{time.time_ns()}"
        t = time.perf_counter()
        got = ingest(job.data.sources, ref, fp, 512, root, seed=0, stop_at_bad=True,
                     parallel=True, target_bytes=size // tasks + 1)
        times.setdefault(tasks, []).append(time.perf_counter() - t)
        assert got[0].error is None
    ray_data = [_ray_data_seconds(data, str(work / "tok")) for _ in range(2)] \
        if with_ray_data else []
    ray.shutdown()
    one, two = min(times[1]), min(times[2])
    out = {"one_task_s": one, "two_tasks_s": two, "speedup": one / two}
    if ray_data:
        out.update(ray_data_2_actors_s=min(ray_data), ray_data_over_tasks_2=min(ray_data) / two)
    return out


class _EncodeBatch:
    """Ray Data's side of the comparison: the same parse + render + tokenise per row as an
    ingestion task (data/rows.parse_row, data/format.encode_row), in a map_batches actor that
    loads the tokenizer once. It writes nothing (each task also writes its shard part), so
    the comparison favours Ray Data."""

    def __init__(self, tok_path: str):
        from stardss.data.tokenizer import load_tokenizer

        self.tok = load_tokenizer(tok_path)

    def __call__(self, batch: dict) -> dict:
        import numpy as np

        from stardss.data.format import encode_row
        from stardss.data.rows import parse_row

        n = []
        for i, (rid, prompt, response) in enumerate(zip(batch["id"], batch["prompt"],
                                                        batch["response"])):
            row = parse_row({"id": rid, "prompt": prompt, "response": response}, "bench", i)
            n.append(len(encode_row(self.tok, row, 512).input_ids))
        return {"tokens": np.asarray(n)}


def _ray_data_seconds(data: Path, tok_path: str) -> float:
    """Wall time of Ray Data's read_json + map_batches over `data`: 2 actors of one CPU each
    (the read tasks take no CPU slot, or the actors would leave them none on 2 CPUs)."""
    import ray

    started = time.perf_counter()
    ds = ray.data.read_json(str(data), ray_remote_args={"num_cpus": 0}).map_batches(
        _EncodeBatch, fn_constructor_args=(tok_path,), batch_size=1024, concurrency=2,
        num_cpus=1)
    assert sum(len(b["tokens"]) for b in ds.iter_batches(batch_size=None)) > 0
    return time.perf_counter() - started


def worker(work: Path, steps_file: Path, n_steps: int) -> dict:
    """A Train worker's view: unpickle the ShardSteps, take `n_steps` steps of rank 0."""
    import stardss.train.feed  # noqa: F401  (imports are not what the rows cost)

    with open(steps_file, "rb") as f:
        steps = pickle.load(f)
    steps.step(0, 0)  # opens the shard set: its per-row maps (16 bytes a dataset row)
    before = _anon_kb()
    trained = 0
    for s in range(1, min(n_steps, steps.n_steps)):
        (mbs, _), _ = steps.step(s, 0)
        trained += sum(r is not None for mb in mbs for r in mb)
    grown = (_anon_kb() - before) * 1024
    return {"rows_trained": trained, "anon_growth_bytes": grown,
            "anon_bytes_per_row_trained": grown / trained}


def _sub(*args: str) -> dict:
    out = subprocess.run([sys.executable, __file__, "--part", *args], capture_output=True,
                         text=True, cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    if out.returncode:
        raise RuntimeError(out.stderr[-3000:])
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--quick", action="store_true")
    p.add_argument("--ray-data", action="store_true",
                   help="also time Ray Data's read_json + map_batches against the tasks")
    p.add_argument("--part", nargs="+")  # internal: one measurement in a fresh process
    args = p.parse_args()
    if args.part:
        kind, work, *rest = args.part
        work = Path(work)
        if kind == "driver":
            print(json.dumps(driver(work, Path(rest[0]), rest[1])))
        elif kind == "speedup":
            print(json.dumps(speedup(work, Path(rest[0]), rest[1:] == ["ray-data"])))
        else:
            print(json.dumps(worker(work, Path(rest[0]), int(rest[1]))))
        return
    from stardss.demo.tokenizer import train_bpe_tokenizer
    from stardss.demo.world import corpus

    sizes = (5_000, 20_000) if args.quick else (20_000, 200_000)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        train_bpe_tokenizer(corpus(0) + [" ".join(WORDS)] * 20, 1024).save_pretrained(
            work / "tok")
        files = {}
        for n in sizes:
            files[n] = work / f"rows{n}.jsonl"
            write_rows(files[n], n)
        sharded = {n: _sub("driver", str(work), str(files[n]), "sharded") for n in sizes}
        baseline = _sub("driver", str(work), str(files[sizes[0]]), "memory")
        speed_file = work / "speed.jsonl"
        write_rows(speed_file, 6_000 if args.quick else 30_000, seed=1)
        speed = _sub("speedup", str(work), str(speed_file),
                     *(["ray-data"] if args.ray_data else []))
        # the worker's step source over the largest run's shards, as the spec ships it
        from stardss.data.load import prepare_training_data
        from stardss.train.batches import train_row
        from stardss.train.feed import shard_steps

        job = _job(work, files[sizes[-1]])
        _, data = prepare_training_data(job.data, job.model, str(work / "tok"), work / "w",
                                        seed=0, shard_root=work / "shards-w", parallel=False
                                        ) if args.quick else (None, None)
        if data is None:  # reuse the shards the driver measurement wrote (same key)
            root = next(work.glob(f"shards-{files[sizes[-1]].stem}-*"))
            _, data = prepare_training_data(job.data, job.model, str(work / "tok"),
                                            work / "w", seed=0, shard_root=root)
        steps = shard_steps(data, job.train, 0, {})
        blob = pickle.dumps(steps)
        (work / "steps.pkl").write_bytes(blob)
        held = _sub("worker", str(work), str(work / "steps.pkl"), "2000")
        table = len(pickle.dumps([train_row(e) for e in data.encoded[:2000]])) / 2000
    per_row = {n: sharded[n]["bytes_per_row"] for n in sizes}
    print(json.dumps({
        "driver_bytes_per_row": max(per_row.values()),
        "driver_bytes_per_row_by_rows": per_row,
        "driver_bytes_per_row_in_memory_baseline": baseline["bytes_per_row"],
        "driver": {str(n): sharded[n] for n in sizes},
        "driver_in_memory": baseline,
        "tokenize_speedup_2_vs_1": speed["speedup"],
        "tokenize": speed,
        "worker_shipped_bytes_per_row": len(blob) / len(data.positions),
        "worker_anon_bytes_per_row_trained": held["anon_bytes_per_row_trained"],
        "worker": held,
        "table_steps_shipped_bytes_per_row": table,
        "global_batch": job.train.micro_batch_size * job.train.grad_accum * job.train.workers,
    }))


if __name__ == "__main__":
    main()
