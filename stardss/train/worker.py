"""What every Ray Train worker runs: DeepSpeed engine, reference model, the step loop.

Gradient scaling, spelled out once: DeepSpeed divides the loss passed to `backward` by the
accumulation steps and averages gradients over data-parallel ranks. Passing
`sum_of_token_losses * world * accum / tokens_in_global_batch` therefore yields the gradient of
(sum over the global batch) / (response tokens in the global batch), whatever the split.
"""
from __future__ import annotations

import copy
import importlib
import json
import math
import os
import sys
import tempfile
import time

import torch

from .batches import collate
from .ds_config import deepspeed_config
from .feed import FeedSteps, TableSteps
from .loss import stardss_loss


def cosine_schedule(step: int, total: int, warmup: int, lr: float, min_lr: float) -> float:
    """Learning rate at optimizer step `step` (0-based): linear warmup, then cosine to min_lr."""
    if warmup > 0 and step < warmup:
        return lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return min_lr + 0.5 * (lr - min_lr) * (1.0 + math.cos(math.pi * min(1.0, progress)))


def _init_deepspeed():
    import deepspeed

    # The shared-memory comm op compiles for ~30 s on first use and gloo does not need it.
    importlib.import_module("deepspeed.comm.torch").build_shm_op = lambda: None
    deepspeed.init_distributed(dist_backend=torch.distributed.get_backend())
    return deepspeed


def train_loop_per_worker(config: dict) -> None:
    import ray
    import ray.train
    import torch.distributed as dist
    from transformers import AutoModelForCausalLM

    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    train, loss_cfg = config["train"], config["loss"]
    torch.set_num_threads(max(1, int(train["cpus_per_worker"])))
    torch.manual_seed(config["seed"])
    deepspeed = _init_deepspeed()

    micro, accum = train["micro_batch_size"], train["grad_accum"]
    source = _step_source(config["steps"], micro, accum, train["timeout_s"])
    n_steps = int(config["n_steps"])
    dtype = torch.bfloat16 if train["bf16"] else torch.float32
    model = AutoModelForCausalLM.from_pretrained(config["model_path"], dtype=dtype)
    reference = None
    if loss_cfg["kind"] == "dss":
        # The reference is the initial model, frozen: a copy taken before any update.
        reference = copy.deepcopy(model).eval().requires_grad_(False)

    warmup = int(train["warmup_ratio"] * n_steps)
    optimizer = torch.optim.AdamW(model.parameters(), lr=train["lr"], betas=tuple(train["betas"]),
                                  weight_decay=train["weight_decay"])
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: cosine_schedule(s, n_steps, warmup, train["lr"], train["min_lr"])
        / train["lr"])
    engine, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer,
                                           lr_scheduler=scheduler,
                                           config=deepspeed_config(train, world))
    if reference is not None:
        reference.to(engine.device)
    pad_id = config["pad_id"]
    deadline = time.monotonic() + train["timeout_s"]
    log: list[dict] = []
    started = time.perf_counter()
    tracker = _open_tracker(config, rank)
    with tracker:
        for step in range(n_steps):
            t0 = time.perf_counter()
            lr_now = scheduler.get_last_lr()[0]
            (micro_batches, n_tokens), wait_s = source.step(step, rank)
            sums = _step(engine, reference, micro_batches, n_tokens, pad_id, loss_cfg,
                         world * accum)
            total, ce, kl, wsum, low, tokens = sums
            log.append({"step": step + 1, "loss": total / max(n_tokens, 1),
                        "ce": ce / max(tokens, 1), "kl": kl / max(tokens, 1),
                        "mean_weight": wsum / max(tokens, 1),
                        "frac_weight_below_half": low / max(tokens, 1),
                        "lr": lr_now, "tokens": int(tokens), "wait_seconds": wait_s,
                        "step_seconds": time.perf_counter() - t0})
            if rank == 0 and ((step + 1) % train["log_every"] == 0 or step + 1 == n_steps):
                e = log[-1]
                # Not print(): Ray Train patches it to log *and* echo: every line twice.
                sys.stdout.write(f"[stardss {config['run_name']}] step {step + 1}/{n_steps} "
                                 f"loss {e['loss']:.4f} ce {e['ce']:.4f} kl {e['kl']:.5f} "
                                 f"w {e['mean_weight']:.3f} lr {e['lr']:.2e}\n")
                sys.stdout.flush()
            tracker.log({f"train/{k}": v for k, v in log[-1].items() if k != "step"},
                        step=step + 1)
            if time.monotonic() > deadline:
                raise TimeoutError(f"train.timeout_s={train['timeout_s']} exceeded at step "
                                   f"{step + 1}")

        seconds = time.perf_counter() - started
        tracker.summary({"final_loss": log[-1]["loss"] if log else float("nan"),
                         "train_seconds": seconds, "steps": len(log)})
    _save_and_report(engine, config, rank, log, seconds, train["zero_stage"])
    dist.barrier()


def _step(engine, reference, micro_batches, n_tokens: int, pad_id: int, loss_cfg: dict,
          scale: float) -> list[float]:
    """One optimizer step over this rank's micro-batches; the global batch's metric sums
    (loss, ce, kl, weight, low-weight and trained tokens), summed over ranks."""
    import torch.distributed as dist

    sums = torch.zeros(6, dtype=torch.float64, device=engine.device)
    for rows in micro_batches:
        batch = {k: v.to(engine.device) for k, v in collate(rows, pad_id).items()}
        logits = engine(input_ids=batch["input_ids"],
                        attention_mask=batch["attention_mask"]).logits
        ref_logits = None
        if reference is not None:
            with torch.no_grad():
                ref_logits = reference(input_ids=batch["input_ids"],
                                       attention_mask=batch["attention_mask"]).logits
        out = stardss_loss(logits, batch["input_ids"], batch["loss_mask"], batch["weights"],
                           loss_cfg["kind"], ref_logits, loss_cfg["kl"]["coef"],
                           loss_cfg["kl"]["estimator"])
        # scale = world * accum: see the module docstring
        engine.backward(out.total * (scale / max(n_tokens, 1)))
        engine.step()
        sums += torch.stack([out.total.detach(), out.ce, out.kl, out.weight.detach(),
                             out.low_weight, out.tokens]).double()
    dist.all_reduce(sums)
    return sums.tolist()


def _open_tracker(config: dict, rank: int):
    """Rank 0's W&B run (training metrics) in the job's group; other ranks log nothing."""
    from ..tracking import open_tracker

    job = config["job"]
    return open_tracker(job["tracking"]["wandb"] if rank == 0 else None, job=job,
                        group=config["tracker_group"], role="train", out_dir=config["out_dir"])


def _step_source(steps: dict, micro: int, accum: int, timeout_s: float):
    import ray

    if steps["kind"] == "feed":
        return FeedSteps(steps["feed"], float(steps["wait_s"]))
    rows = steps["rows"]
    if isinstance(rows, ray.ObjectRef):
        rows = ray.get(rows, timeout=timeout_s)
    return TableSteps(rows, steps["plan"], micro, accum)


def _save_and_report(engine, config, rank, log, seconds, zero_stage) -> None:
    import ray.train
    from ray.train import Checkpoint
    from transformers import AutoTokenizer

    from ..tracking import redact

    # Under ZeRO-3 every rank holds a shard: all must take part in gathering the weights.
    state = engine._zero3_consolidated_16bit_state_dict() if zero_stage == 3 else None
    metrics = {"steps": len(log), "final_loss": log[-1]["loss"] if log else float("nan"),
               "train_seconds": seconds,
               "wait_seconds": sum(e["wait_seconds"] for e in log)}
    if rank != 0:
        ray.train.report(metrics, checkpoint=None)
        return
    with tempfile.TemporaryDirectory() as tmp:
        engine.module.save_pretrained(tmp, state_dict=state, safe_serialization=True)
        AutoTokenizer.from_pretrained(config["tokenizer_path"]).save_pretrained(tmp)
        with open(os.path.join(tmp, "stardss_train_log.json"), "w") as f:
            # The folder may be pushed to a hub: the job's secrets (env vars) stay out of it.
            json.dump({"metrics": metrics, "steps": log, "job": redact(config["job"])}, f,
                      indent=1)
        ray.train.report(metrics, checkpoint=Checkpoint.from_directory(tmp))

