"""What every Ray Train worker runs: the policy's DeepSpeed engine, the reference, the step loop.

Gradient scaling, spelled out once: DeepSpeed divides the loss passed to `backward` by the
accumulation steps and averages gradients over data-parallel ranks. Passing
`sum_of_token_losses * world * accum / tokens_in_global_batch` therefore yields the gradient of
(sum over the global batch) / (response tokens in the global batch), whatever the split.
"""
from __future__ import annotations

import importlib
import sys
import time

import torch

from ..config.schema import LossConfig
from .batches import collate
from .checkpoint import restore, save_final, save_resumable, save_snapshot
from .ds_config import deepspeed_config
from .engine import build_policy
from .loss import stardss_loss
from .reference import build_reference
from .spec import TrainingSpec


def _init_deepspeed():
    import deepspeed

    # The shared-memory comm op compiles for ~30 s on first use and gloo does not need it.
    importlib.import_module("deepspeed.comm.torch").build_shm_op = lambda: None
    deepspeed.init_distributed(dist_backend=torch.distributed.get_backend())
    return deepspeed


def train_loop_per_worker(config: dict) -> None:
    """Ray Train's entry point; `config` is {"spec": TrainingSpec}."""
    import ray
    import ray.train
    import torch.distributed as dist

    spec: TrainingSpec = config["spec"]
    train = spec.train
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    torch.set_num_threads(max(1, int(train.cpus_per_worker)))  # whole cores for torch
    torch.manual_seed(spec.seed)
    _init_deepspeed()

    source, n_steps = spec.steps, spec.n_steps
    ds_config = deepspeed_config(train, world, spec.deepspeed_user)
    policy = build_policy(spec.model, train, ds_config, n_steps)
    reference = build_reference(spec, policy, ds_config, rank)
    digest_before = reference.digest() if reference is not None else None
    resume = restore(policy)
    log = list(resume.log)
    deadline = time.monotonic() + train.timeout_s
    started = time.perf_counter()
    tracker = _open_tracker(spec, rank)
    with tracker:
        for step in range(resume.step, n_steps):
            entry, weights = train_step(policy, reference, source, step, rank, world, spec)
            log.append(entry)
            _progress(spec, rank, log[-1], n_steps)
            _track(tracker, log[-1], weights, train.log_every)
            every = train.checkpoint_every
            if every and (step + 1) % every == 0 and step + 1 < n_steps:
                save_resumable(policy, step + 1, log, resume, rank)
                source.done(step + 1, rank)
            snap = spec.snapshot_every
            if snap and (step + 1) % snap == 0 and step + 1 < n_steps:
                paused = time.perf_counter()
                save_snapshot(policy, spec, rank, step + 1)  # safety over training reads it
                log[-1]["snapshot_seconds"] = time.perf_counter() - paused
            if time.monotonic() > deadline:
                raise TimeoutError(f"train.timeout_s={train.timeout_s} exceeded at step "
                                   f"{step + 1}")

        metrics = {"steps": len(log), "final_loss": log[-1]["loss"] if log else float("nan"),
                   "train_seconds": time.perf_counter() - started}
        tracker.summary(metrics)
    digest_after = reference.digest() if reference is not None else None
    metrics.update(resumed_from=resume.resumed_from,
                   wait_seconds=sum(e["wait_seconds"] for e in log[resume.step:]),
                   reference_digests=_gather({"before": digest_before, "after": digest_after}),
                   nodes=_gather(ray.get_runtime_context().get_node_id()))
    save_final(policy, spec, rank, log, metrics)
    dist.barrier()


def train_step(policy, reference, source, step: int, rank: int, world: int,
               spec: TrainingSpec) -> tuple[dict, torch.Tensor]:
    """Optimizer step `step` of the plan: this rank's share of its global batch from `source`;
    returns the step's log entry (global-batch metrics) and this rank's token weights."""
    t0 = time.perf_counter()
    lr_now = policy.scheduler.get_last_lr()[0]
    (micro_batches, n_tokens), wait_s = source.step(step, rank)
    passes = reference.forwards if reference is not None else 0
    sums, weights = _step(policy.engine, reference, micro_batches, n_tokens, spec.pad_id,
                          spec.loss, world * spec.train.grad_accum)
    if reference is not None:
        passes = reference.forwards - passes  # the same on every rank (see reference.py)
        reference.share()  # cached log-probs: every rank learns every row's
    total, ce, kl, wsum, low, tokens = sums
    seconds = time.perf_counter() - t0
    entry = {"step": step + 1, "loss": total / max(n_tokens, 1), "ce": ce / max(tokens, 1),
             "kl": kl / max(tokens, 1), "mean_weight": wsum / max(tokens, 1),
             "frac_weight_below_half": low / max(tokens, 1), "lr": lr_now,
             "tokens": int(tokens), "tokens_per_s": tokens / seconds,
             "ref_forwards": passes, "wait_seconds": wait_s, "step_seconds": seconds}
    return entry, weights


def _step(engine, reference, micro_batches, n_tokens: int, pad_id: int, loss_cfg: LossConfig,
          scale: float):
    """One optimizer step over this rank's micro-batches; the global batch's metric sums
    (loss, ce, kl, weight, low-weight and trained tokens), summed over ranks, and this rank's
    token weights (for the weight histogram)."""
    import torch.distributed as dist

    full = loss_cfg.kl.estimator == "full"
    sums = torch.zeros(6, dtype=torch.float64, device=engine.device)
    weights = []
    for rows in micro_batches:
        batch = {k: v.to(engine.device) for k, v in collate(rows, pad_id).items()}
        logits = engine(input_ids=batch["input_ids"],
                        attention_mask=batch["attention_mask"]).logits
        ref = {}
        if reference is not None and full:
            ref["ref_logits"] = reference.logits(batch)
        elif reference is not None:
            ref["ref_token_logp"] = reference.token_logprobs(batch, rows)
        out = stardss_loss(logits, batch["input_ids"], batch["loss_mask"], batch["weights"],
                           loss_cfg.kind, kl_coef=loss_cfg.kl.coef,
                           kl_estimator=loss_cfg.kl.estimator, **ref)
        # scale = world * accum: see the module docstring
        engine.backward(out.total * (scale / max(n_tokens, 1)))
        engine.step()
        sums += torch.stack([out.total.detach(), out.ce, out.kl, out.weight.detach(),
                             out.low_weight, out.tokens]).double()
        weights.append(batch["weights"][batch["loss_mask"].bool()])
    dist.all_reduce(sums)
    return sums.tolist(), torch.cat(weights).float().cpu() if weights else torch.zeros(0)


def _progress(spec: TrainingSpec, rank: int, entry: dict, n_steps: int) -> None:
    step = entry["step"]
    if rank == 0 and (step % spec.train.log_every == 0 or step == n_steps):
        # Not print(): Ray Train patches it to log *and* echo: every line twice.
        sys.stdout.write(f"[stardss {spec.run_name}] step {step}/{n_steps} "
                         f"loss {entry['loss']:.4f} ce {entry['ce']:.4f} kl {entry['kl']:.5f} "
                         f"w {entry['mean_weight']:.3f} lr {entry['lr']:.2e}\n")
        sys.stdout.flush()


def _track(tracker, entry: dict, weights: torch.Tensor, every: int) -> None:
    tracker.log({f"train/{k}": v for k, v in entry.items() if k != "step"}, step=entry["step"])
    if entry["step"] % every == 0 or entry["step"] == 1:
        tracker.histogram("train/token_weights", weights.numpy(), step=entry["step"])


def _gather(obj) -> list:
    import torch.distributed as dist

    out: list = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def _open_tracker(spec: TrainingSpec, rank: int):
    """Rank 0's W&B run (training metrics) in the job's group; other ranks log nothing."""
    from ..tracking import open_tracker

    return open_tracker(spec.tracking if rank == 0 else None, job=spec.job_record,
                        group=spec.tracker_group, role="train", out_dir=spec.out_dir)
