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

Prints ONE JSON line (~9 min). Run: .venv/bin/python benchmarks/train_step.py [--quick]
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
from stardss.train.batches import plan_for, train_row  # noqa: E402
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
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    if args.quick:
        args.hidden, args.layers, args.vocab, args.rows, args.repeats = 128, 2, 1024, 32, 4
        args.run_pairs = 1

    root = tempfile.mkdtemp(prefix="stardss-train-step-")
    tok = train_bpe_tokenizer(corpus(0), args.vocab)
    model_dir = os.path.join(root, "model")
    tiny = TinyModelConfig(hidden_size=args.hidden, intermediate_size=4 * args.hidden,
                           num_layers=args.layers, num_heads=8, vocab_size=args.vocab,
                           max_position_embeddings=256)
    build_tiny_llama(tiny, tok, seed=0).save_pretrained(model_dir)
    tok.save_pretrained(model_dir)
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
                 "cpu_count": os.cpu_count()}
    try:
        # 1. step times (one worker, one thread)
        base = training_spec(job, model_dir, model_dir, tok.pad_token_id, root, "steps")
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
                                     os.path.join(root, f"{name}{r}"), name)
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
            cfg = {"base": training_spec(mem_job, model_dir, model_dir, tok.pad_token_id, root,
                                         f"mem-z{stage}"),
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
                        abs(out["zero3_over_zero1_param_bytes"] - 0.5) < 0.1}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
