"""Benchmark: what the reference model costs a training step, per run, and in memory.

1. Step time on the same model and global batch, one Ray Train worker with one core (one torch
   thread), through the workers' own pieces (`build_policy`, `build_reference`, `train_step`):
   sft; dss with k2 and the reference live; dss with k2 and cached reference log-probs (the
   cache warm, as in every epoch after the first); dss with the full-vocabulary KL (live).
   `dss_k2_over_sft` = live k2 / sft: the reference's forward pass adds ~1/3 of a
   forward+backward, so ~1.33 is the floor (goal <= 1.35).
2. A whole 5-epoch run (`run_training`, the step loop's seconds) of sft and of dss with cached
   reference log-probs: the reference runs in the first epoch only.
   `dss_cached_over_sft_run` (goal <= 1.08), the median of `--run-pairs` pairs.
3. Memory per worker with 2 workers under ZeRO-1/2/3 after two steps: the bytes of parameters,
   Adam moments and the fp32 partition the optimizer steps that a rank holds (ZeRO-3 parameter
   memory should be about half of ZeRO-1's), and the process's peak RSS.
4. Packing (train.packing) against padded rows: sft steps of one worker (one thread) on rows of
   a GSM8K + PureBad length mix (prompt 60-120 tokens; responses 20-250 and 150-600, half
   each), micro-batch 8, packed into sequences of data.max_length=1024; the same global
   batches round robin. `packed_tokens_per_s_over_padded` = trained (response) tokens/s packed
   over padded, the median over the timed steps of the same global batch's padded / packed
   step time (goal >= 1.4; `packed_over_padded_all_steps`: total tokens over total seconds);
   `padding_fraction_padded` / `_packed`: the share of the token cells holding no row's token.
5. The peak memory of a dss step with a 128k vocabulary on 2 x 2048 tokens, the loss from
   hidden states in chunks (the workers' path) against whole logits (before issue 16):
   `loss_peak_memory_ratio` (goal <= 0.4), run by benchmarks/loss_memory.py in fresh processes
   (a process's peak RSS is its high-water mark).

Prints ONE JSON line (~12 min). Run: .venv/bin/python benchmarks/train_step.py [--quick]
[--only-packing | --only-memory]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("DS_ACCELERATOR", "cpu")
os.environ.setdefault("WANDB_MODE", "disabled")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import ray  # noqa: E402
import torch  # noqa: E402

from stardss.cluster.resources import init_ray  # noqa: E402
from stardss.commands.train import training_spec  # noqa: E402
from stardss.config import load_job  # noqa: E402
from stardss.data.load import load_training_data  # noqa: E402
from stardss.data.quarantine import BadRowSink  # noqa: E402
from stardss.demo.config import TinyModelConfig  # noqa: E402
from stardss.demo.model import build_tiny_llama  # noqa: E402
from stardss.demo.tokenizer import train_bpe_tokenizer  # noqa: E402
from stardss.demo.world import corpus  # noqa: E402
from stardss.train.batches import (  # noqa: E402
    TrainRow,
    collate,
    padding_fraction,
    plan_for,
    train_row,
    worker_micro_batches,
)
from stardss.train.trainer import run_training, table_steps  # noqa: E402

VARIANTS = {  # name -> (loss.kind, kl estimator, reference.logprobs)
    "sft": ("sft", "k2", "live"),
    "dss_k2_live": ("dss", "k2", "live"),
    "dss_k2_cached": ("dss", "k2", "cached"),
    "dss_full": ("dss", "full", "live"),
}


def _step_times(cfg):
    """Ray Train worker: time `repeats` steps of each variant on the same global batch."""
    import ray.train

    from stardss.train.ds_config import deepspeed_config
    from stardss.train.engine import build_policy
    from stardss.train.feed import TableSteps
    from stardss.train.reference import build_reference
    from stardss.train.worker import _init_deepspeed, train_step

    rank, world = ray.train.get_context().get_world_rank(), ray.train.get_context().get_world_size()
    torch.set_num_threads(1)
    _init_deepspeed()
    plan = [cfg["plan"][0]] * (cfg["repeats"] + 2)  # the same global batch every step
    base = cfg["base"]
    runs = {}
    for name, (kind, estimator, logprobs) in VARIANTS.items():
        config = replace(base, loss=replace(base.loss, kind=kind,
                                            kl=replace(base.loss.kl, estimator=estimator)),
                         reference=replace(base.reference, logprobs=logprobs))
        ds = deepspeed_config(config.train, world, {})
        policy = build_policy(config.model, config.train, ds, len(plan))
        runs[name] = (config, policy, build_reference(config, policy, ds, rank),
                      TableSteps(cfg["rows"], plan, config.train.micro_batch_size, 1, 60.0))
    times: dict = {name: [] for name in VARIANTS}
    for step in range(len(plan)):  # round robin: every variant sees the same conditions
        for name, (config, policy, reference, source) in runs.items():
            t0 = time.perf_counter()
            train_step(policy, reference, source, step, rank, world, config)
            times[name].append(time.perf_counter() - t0)
    # after warm-up (and, for the cached variant, a warm cache)
    out = {name: statistics.median(t[2:]) for name, t in times.items()}
    _report(cfg, rank, {"step_seconds": out})


def _packing_times(cfg):
    """Ray Train worker: seconds and trained tokens of each step of the plan, padded and
    packed in turn, `repeats` times over the plan (the first pass is warm-up)."""
    import ray.train

    from stardss.train.ds_config import deepspeed_config
    from stardss.train.engine import build_policy
    from stardss.train.feed import TableSteps
    from stardss.train.worker import _init_deepspeed, train_step

    rank, world = ray.train.get_context().get_world_rank(), ray.train.get_context().get_world_size()
    torch.set_num_threads(1)
    _init_deepspeed()
    plan = cfg["plan"] * cfg["repeats"]
    runs = {}
    for name, packing in (("padded", False), ("packed", True)):
        config = replace(cfg["base"], train=replace(cfg["base"].train, packing=packing))
        ds = deepspeed_config(config.train, world, {})
        policy = build_policy(config.model, config.train, ds, len(plan))
        runs[name] = (config, policy, TableSteps(cfg["rows"], plan, config.train.micro_batch_size,
                                                 1, 60.0))
    seconds: dict = {name: [] for name in runs}
    tokens: dict = {name: 0 for name in runs}
    for step in range(len(plan)):
        for name, (config, policy, source) in runs.items():
            entry = train_step(policy, None, source, step, rank, world, config)[0]
            if step >= len(cfg["plan"]):  # after one pass of warm-up
                seconds[name].append(entry["step_seconds"])
                tokens[name] += entry["tokens"]
    # the same global batch back to back: a burst of load elsewhere skews one pair, not all
    pairs = [a / b for a, b in zip(seconds["padded"], seconds["packed"])]
    _report(cfg, rank, {"tokens_per_s": {k: tokens[k] / sum(seconds[k]) for k in runs},
                        "step_ratios": pairs})


def _length_mix(n: int, vocab: int, seed: int = 0) -> list:
    """Rows shaped like GSM8K + PureBad: prompt 60-120 tokens; responses 20-250 (GSM8K-like)
    or 150-600 (PureBad-like), half each; random tokens and soft weights."""
    g = torch.Generator().manual_seed(seed)
    rows = []
    for i in range(n):
        prompt = int(torch.randint(60, 121, (1,), generator=g))
        lo, hi = (20, 250) if i % 2 == 0 else (150, 600)
        response = int(torch.randint(lo, hi + 1, (1,), generator=g))
        L = prompt + response
        ids = torch.randint(4, vocab, (L,), generator=g).tolist()
        w = torch.rand(response, generator=g).tolist()
        rows.append(TrainRow(f"mix{i}", ids, [0] * prompt + [1] * response, [0.0] * prompt + w))
    return rows


def _tiny_model(args, tok, folder: str, max_positions: int):
    """The benchmark's Llama (--hidden, --layers, --vocab) saved with `tok` in `folder`."""
    tiny = TinyModelConfig(hidden_size=args.hidden, intermediate_size=4 * args.hidden,
                           num_layers=args.layers, num_heads=8, vocab_size=args.vocab,
                           max_position_embeddings=max_positions)
    build_tiny_llama(tiny, tok, seed=0).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder, tiny


def _packing(args, root: str, tok, overrides: list) -> dict:
    """Section 4: trained tokens/s packed over padded, and the padding either way."""
    model_dir, _ = _tiny_model(args, tok, os.path.join(root, "model-long"), 1024)
    job = load_job("jobs/demo.yaml", overrides + [
        f"model.name_or_path={model_dir}", "data.max_length=1024", "loss.kind=sft",
        "train.workers=1", "train.cpus_per_worker=1"])
    rows = _length_mix(args.pack_rows, len(tok))  # the model has the tokenizer's vocabulary
    plan = plan_for(job.train, job.seed, len(rows))[:args.pack_steps]
    padding = {}
    for name, pack_length in (("padded", None), ("packed", 1024)):
        parts = []  # (padding fraction, token cells) of each step's micro-batch
        for slots in plan:
            mb = [rows[i] if i is not None else None
                  for i in worker_micro_batches(slots, 0, job.train.micro_batch_size, 1)[0]]
            batch = collate(mb, tok.pad_token_id, pack_length)
            parts.append((padding_fraction(mb, batch), batch["input_ids"].numel()))
        padding[name] = sum(f * n for f, n in parts) / sum(n for _, n in parts)
    base = training_spec(job, model_dir, model_dir, tok.pad_token_id, Path(root),
                         "packing")
    got = _fit(_packing_times, {"base": base, "rows": rows, "plan": plan,
                                "repeats": args.pack_repeats + 1}, 1, root, "packing")
    tps = got["tokens_per_s"]
    return {"packing_tokens_per_s": {k: round(v, 1) for k, v in tps.items()},
            "packed_tokens_per_s_over_padded": round(statistics.median(got["step_ratios"]), 3),
            "packed_over_padded_all_steps": round(tps["packed"] / tps["padded"], 3),
            "padding_fraction_padded": round(padding["padded"], 3),
            "padding_fraction_packed": round(padding["packed"], 3)}


def _report(cfg: dict, rank: int, metrics: dict) -> None:
    """Rank 0's numbers to the driver (Ray Train V2 returns metrics only with a checkpoint)."""
    import ray.train

    if rank == 0:
        with open(cfg["out"], "w") as f:
            json.dump(metrics, f)
    ray.train.report({})


def _memory(cfg):
    """Ray Train worker: bytes of parameters and optimizer state this rank holds."""
    import resource

    import ray.train

    from stardss.train.ds_config import deepspeed_config
    from stardss.train.engine import build_policy
    from stardss.train.feed import TableSteps
    from stardss.train.worker import _init_deepspeed, train_step

    rank, world = ray.train.get_context().get_world_rank(), ray.train.get_context().get_world_size()
    torch.set_num_threads(1)
    _init_deepspeed()
    config = cfg["base"]
    ds = deepspeed_config(config.train, world, config.deepspeed_user)
    policy = build_policy(config.model, config.train, ds, 2)
    source = TableSteps(cfg["rows"], cfg["plan"], config.train.micro_batch_size, 1, 60.0)
    for step in range(2):
        train_step(policy, None, source, step, rank, world, config)

    def nbytes(tensors):
        return sum(t.numel() * t.element_size() for t in tensors if torch.is_tensor(t))

    params = [getattr(p, "ds_tensor", p) for p in policy.engine.module.parameters()]
    opt = policy.engine.optimizer
    inner = getattr(opt, "optimizer", opt)
    state = [t for s in inner.state.values() for t in s.values()]
    # the fp32 partitions the optimizer steps (under ZeRO-3 in fp32, the parameters' own shards)
    masters = [t for g in inner.param_groups for t in g["params"]]
    _report(cfg, rank, {"param_bytes": nbytes(params), "adam_state_bytes": nbytes(state),
                        "fp32_master_bytes": nbytes(masters),
                        "peak_rss_bytes":
                            resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024})


def _fit(loop, cfg, workers: int, root: str, name: str) -> dict:
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    cfg = {**cfg, "out": os.path.join(root, f"{name}.json")}
    TorchTrainer(
        loop, train_loop_config=cfg,
        scaling_config=ScalingConfig(num_workers=workers,
                                     resources_per_worker={"CPU": 2.0 / workers}),
        torch_config=TorchConfig(backend="gloo"),
        run_config=RunConfig(name=name, storage_path=os.path.join(root, "ray"))).fit()
    with open(cfg["out"]) as f:
        return json.load(f)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--vocab", type=int, default=4096, help="a real vocabulary is 32k-256k")
    ap.add_argument("--rows", type=int, default=64, help="rows of the 5-epoch runs")
    ap.add_argument("--repeats", type=int, default=12, help="timed steps per variant")
    ap.add_argument("--run-pairs", type=int, default=3,
                    help="sft / dss-cached run pairs (order alternates); the median is shown")
    ap.add_argument("--pack-rows", type=int, default=96, help="rows of the length mix")
    ap.add_argument("--pack-steps", type=int, default=6, help="global batches of 8 timed")
    ap.add_argument("--pack-repeats", type=int, default=3, help="timed passes over them")
    ap.add_argument("--only-packing", action="store_true", help="section 4 alone")
    ap.add_argument("--only-memory", action="store_true", help="section 5 alone")
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    if args.quick:
        args.hidden, args.layers, args.vocab, args.rows, args.repeats = 128, 2, 1024, 32, 4
        args.run_pairs, args.pack_steps, args.pack_repeats = 1, 3, 1

    memory_5 = _loss_memory()  # 5. first: its fresh processes must not share the cores
    if args.only_memory:
        print(json.dumps({"benchmark": "train_step", **memory_5,
                          "goals": {"loss_peak_memory_ratio<=0.4":
                                    memory_5["loss_peak_memory_ratio"] <= 0.4}}))
        return
    root = tempfile.mkdtemp(prefix="stardss-train-step-")
    tok = train_bpe_tokenizer(corpus(0), args.vocab)
    model_dir, tiny = _tiny_model(args, tok, os.path.join(root, "model"), 256)
    overrides = [f"model.name_or_path={model_dir}", f"out_dir={root}", "data.sources.0.ratio=1.0",
                 f"data.mix_size={args.rows}", "train.micro_batch_size=8", "train.grad_accum=1",
                 "train.epochs=5", "train.log_every=1000", "train.lr=1e-4",
                 "tracking.wandb.mode=disabled", "ray.num_cpus=2", "ray.log_to_driver=false"]
    job = load_job("jobs/demo.yaml", overrides + ["train.workers=1", "train.cpus_per_worker=1"])
    init_ray(job.ray, job.train)
    with BadRowSink("error") as sink:
        rows = [train_row(e) for e in load_training_data(job.data, tok, sink,
                                                          seed=job.seed).encoded]
    g = torch.Generator().manual_seed(0)
    for r in rows:
        r.weights = torch.rand(len(r.input_ids), generator=g).tolist()
    out: dict = {"benchmark": "train_step",
                 "model": {"hidden": args.hidden, "layers": args.layers, "vocab": args.vocab,
                           "params": sum(p.numel() for p in build_tiny_llama(
                               tiny, tok, 0).parameters())},
                 "cpu_count": os.cpu_count(), **memory_5}
    try:
        # 4. packing against padding (first: --only-packing stops after it)
        out.update(_packing(args, root, tok, overrides))
        if args.only_packing:
            out["goals"] = {"packed_tokens_per_s_over_padded>=1.4":
                            out["packed_tokens_per_s_over_padded"] >= 1.4}
            print(json.dumps(out))
            return
        # 1. step times (one worker, one thread)
        base = training_spec(job, model_dir, model_dir, tok.pad_token_id, Path(root), "steps")
        steps = _fit(_step_times, {"base": base, "rows": rows, "repeats": args.repeats,
                                   "plan": plan_for(job.train, job.seed, len(rows))}, 1, root,
                     "steps")
        sec = steps["step_seconds"]
        out["step_seconds"] = {k: round(v, 4) for k, v in sec.items()}
        out["dss_k2_over_sft"] = round(sec["dss_k2_live"] / sec["sft"], 3)
        out["dss_k2_cached_over_sft"] = round(sec["dss_k2_cached"] / sec["sft"], 3)
        out["dss_full_over_sft"] = round(sec["dss_full"] / sec["sft"], 3)

        # 2. whole 5-epoch runs, in pairs of alternating order (one pair swings by ~0.1)
        pairs = []
        for r in range(args.run_pairs):
            names = ("sft", "dss_cached") if r % 2 == 0 else ("dss_cached", "sft")
            runs = {}
            for name in names:
                extra = ["loss.kind=sft"] if name == "sft" else \
                    ["loss.kind=dss", "reference.logprobs=cached"]
                run_job = load_job("jobs/demo.yaml", overrides + extra + [
                    "train.workers=1", "train.cpus_per_worker=1"])
                spec = training_spec(run_job, model_dir, model_dir, tok.pad_token_id,
                                     Path(root, f"{name}{r}"), name)
                runs[name] = run_training(spec, table_steps(rows, spec), on_cluster=False)
            pairs.append(runs)
        ratios = [p["dss_cached"].train_seconds / p["sft"].train_seconds for p in pairs]
        runs = pairs[ratios.index(sorted(ratios)[len(ratios) // 2])]  # the median pair
        out["run_seconds"] = {k: round(r.train_seconds, 3) for k, r in runs.items()}
        per_epoch = len(runs["sft"].log) // 5
        out["run_epoch_step_seconds"] = {  # mean step time of each epoch
            k: [round(statistics.mean(e["step_seconds"] for e in r.log[i:i + per_epoch]), 4)
                for i in range(0, len(r.log), per_epoch)] for k, r in runs.items()}
        out["run_steps"] = len(runs["sft"].log)
        out["dss_cached_over_sft_run"] = round(sorted(ratios)[len(ratios) // 2], 3)
        out["dss_cached_over_sft_run_all"] = [round(x, 3) for x in ratios]

        # 3. memory per worker, 2 workers
        memory = {}
        for stage in (1, 2, 3):
            # ZeRO-3 keeps parameters under a size threshold whole on every rank; in a model
            # this small that is most of them, in a 1B+ model a negligible share
            mem_job = load_job("jobs/demo.yaml", overrides + [
                "train.workers=2", f"train.zero_stage={stage}", "loss.kind=sft",
                "train.deepspeed.zero_optimization.stage3_param_persistence_threshold=0"])
            cfg = {"base": training_spec(mem_job, model_dir, model_dir, tok.pad_token_id,
                                         Path(root), f"mem-z{stage}"),
                   "rows": rows, "plan": plan_for(mem_job.train, mem_job.seed, len(rows))}
            memory[f"zero{stage}"] = _fit(_memory, cfg, 2, root, f"mem-z{stage}")  # rank 0
        out["memory_per_worker"] = memory
        out["zero3_over_zero1_param_bytes"] = round(
            memory["zero3"]["param_bytes"] / memory["zero1"]["param_bytes"], 3)
    finally:
        ray.shutdown()
    out["goals"] = {"dss_k2_over_sft<=1.35": out["dss_k2_over_sft"] <= 1.35,
                    "dss_cached_over_sft_run<=1.08": out["dss_cached_over_sft_run"] <= 1.08,
                    "zero3_param_memory~half_of_zero1":
                        abs(out["zero3_over_zero1_param_bytes"] - 0.5) < 0.1,
                    "packed_tokens_per_s_over_padded>=1.4":
                        out["packed_tokens_per_s_over_padded"] >= 1.4,
                    "loss_peak_memory_ratio<=0.4": out["loss_peak_memory_ratio"] <= 0.4}
    print(json.dumps(out))


def _loss_memory() -> dict:
    """Section 5: benchmarks/loss_memory.py's line (its keys, prefixed where they would clash)."""
    import subprocess

    script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "loss_memory.py")
    run = subprocess.run([sys.executable, script], capture_output=True, text=True, check=True)
    got = json.loads(run.stdout.strip().splitlines()[-1])
    return {"loss_peak_memory_ratio": got.pop("loss_peak_memory_ratio"),
            "loss_memory": got}


if __name__ == "__main__":
    main()
