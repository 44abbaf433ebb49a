"""What every Ray Train worker runs: the policy's DeepSpeed engine, the reference, the step loop.

Gradient scaling, spelled out once: DeepSpeed divides the loss passed to `backward` by the
accumulation steps and averages gradients over data-parallel ranks. Passing
`sum_of_token_losses * world * accum / tokens_in_global_batch` therefore yields the gradient of
(sum over the global batch) / (response tokens in the global batch), whatever the split.

A step whose loss or gradient norm is non-finite on any rank updates nothing on every rank and
is logged `"skipped": true`; the run fails at the (train.max_nonfinite_steps + 1)-th (finite.py).
"""
from __future__ import annotations

import importlib
import math
import sys
import time
from contextlib import nullcontext

import torch

from ..config.schema import LossConfig
from .batches import by_length, check_packing, collate, model_inputs
from .checkpoint import restore, save_final, save_resumable, save_snapshot
from .ds_config import deepspeed_config
from .engine import build_policy
from .finite import first_nonfinite, no_update, nonfinite_message, step_row_ids
from .hidden import forward_hidden
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
    if train.packing:  # before the first step: the model must keep packed rows apart
        check_packing(policy.engine, policy.engine.module.config.vocab_size, spec.pad_id,
                      spec.model.name_or_path)
    reference = build_reference(spec, policy, ds_config, rank)
    digest_before = reference.digest() if reference is not None else None
    resume = restore(policy)
    if resume.finished:
        return
    source.begin(resume.step, rank)  # a resumed run's earlier steps are in the checkpoint
    restorable = resume.step  # the newest checkpoint a restart is sure to find
    log = list(resume.log)
    deadline = time.monotonic() + train.timeout_s
    started = time.perf_counter()
    tracker = _open_tracker(spec, rank)
    with tracker:
        for step in range(resume.step, n_steps):
            skipped = sum(1 for e in log if e.get("skipped"))  # a resumed run counts on
            entry, weights = train_step(policy, reference, source, step, rank, world, spec,
                                        skipped)
            log.append(entry)
            _progress(spec, rank, log[-1], n_steps)
            _track(tracker, log[-1], weights, train.log_every)
            every = train.checkpoint_every
            if every and (step + 1) % every == 0 and step + 1 < n_steps:
                save_resumable(policy, step + 1, log, resume, rank)
                # Ray Train registers a reported checkpoint a moment later: a failure now may
                # still restore the one before, so only the steps before that one are done
                source.done(restorable, rank)
                restorable = step + 1
            snap = spec.snapshot_every
            if snap and (step + 1) % snap == 0 and step + 1 < n_steps:
                paused = time.perf_counter()
                save_snapshot(policy, spec, rank, step + 1)  # safety over training reads it
                log[-1]["snapshot_seconds"] = time.perf_counter() - paused
            if time.monotonic() > deadline:
                raise TimeoutError(f"train.timeout_s={train.timeout_s} exceeded at step "
                                   f"{step + 1}")

        trained = [e for e in log if not e.get("skipped")]  # a skipped step's loss is not finite
        metrics = {"steps": len(log),
                   "final_loss": trained[-1]["loss"] if trained else float("nan"),
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
               spec: TrainingSpec, skipped: int = 0) -> tuple[dict, torch.Tensor]:
    """Optimizer step `step` of the plan: this rank's share of its global batch from `source`;
    returns the step's log entry (global-batch metrics) and this rank's token weights.
    `skipped`: non-finite steps skipped so far; one more than train.max_nonfinite_steps raises
    RuntimeError (the same line on every rank)."""
    t0 = time.perf_counter()
    lr_now = policy.scheduler.get_last_lr()[0]
    (micro_batches, n_tokens), wait_s = source.step(step, rank)
    passes = reference.forwards if reference is not None else 0
    if spec.train.group_by_length:  # the same rows on this rank, in another order
        micro_batches = by_length(micro_batches)
    sums, weights, bad = _step(policy, reference, micro_batches, n_tokens, spec.pad_id,
                               spec.loss, world * spec.train.grad_accum, _pack_length(spec))
    if bad is not None:
        what, value, bad_rank, ids, applied = bad
        allowed = spec.train.max_nonfinite_steps
        line = nonfinite_message(what, value, step + 1, bad_rank, ids, allowed)
        if applied:  # DeepSpeed stepped on (bf16 under ZeRO does not skip): weights are lost
            raise RuntimeError(f"{line} (the update was applied: the weights are not finite)")
        if skipped + 1 > allowed:
            raise RuntimeError(line)
        if rank == 0:
            sys.stdout.write(f"[stardss {spec.run_name}] skipped (no update): {line}\n")
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
    if bad is not None:
        entry["skipped"] = True
    return entry, weights


def _pack_length(spec: TrainingSpec):
    """train.packing: sequences of up to data.max_length tokens (None: padded rows)."""
    return spec.max_length if spec.train.packing else None


def _step(policy, reference, micro_batches, n_tokens: int, pad_id: int, loss_cfg: LossConfig,
          scale: float, pack_length=None):
    """One optimizer step over this rank's micro-batches (each one forward/backward pass,
    padded or, with `pack_length`, packed: batches.collate); the global batch's metric sums
    (loss, ce, kl, weight, low-weight and trained tokens), summed over ranks, this rank's
    token weights (for the weight histogram), and None, or when the step was not finite on
    some rank (what, value, that rank, its row ids, whether the update was applied anyway)."""
    import torch.distributed as dist

    engine = policy.engine
    full = loss_cfg.kl.estimator == "full"
    sums = torch.zeros(6, dtype=torch.float64, device=engine.device)
    weights = []
    for rows in micro_batches:
        batch = {k: v.to(engine.device) for k, v in collate(rows, pad_id, pack_length).items()}
        # Hidden states + the head (train/hidden.py): the loss makes logits chunk by chunk,
        # never the whole (B, T, V) tensor.
        scores = forward_hidden(engine, model_inputs(batch), policy.head)
        ref = {}
        if reference is not None and full:
            ref["ref_logits"] = reference.hidden(batch)
        elif reference is not None:
            ref["ref_token_logp"] = reference.token_logprobs(batch, rows)
        out = stardss_loss(scores, batch["input_ids"], batch["loss_mask"], batch["weights"],
                           loss_cfg.kind, kl_coef=loss_cfg.kl.coef,
                           kl_estimator=loss_cfg.kl.estimator, **ref)
        # scale = world * accum: see the module docstring
        engine.backward(out.total * (scale / max(n_tokens, 1)))
        sums += torch.stack([out.total.detach(), out.ce, out.kl, out.weight.detach(),
                             out.low_weight, out.tokens]).double()
        weights.append(batch["weights"][batch["loss_mask"].bool()])
        if len(weights) < len(micro_batches):
            engine.step()  # not the boundary: DeepSpeed only counts the micro-batch
    bad = _guarded_step(policy, float(sums[0]), step_row_ids(micro_batches))
    dist.all_reduce(sums)
    return (sums.tolist(), torch.cat(weights).float().cpu() if weights else torch.zeros(0),
            bad)


def _guarded_step(policy, local_loss: float, row_ids: list[str]):
    """The boundary `engine.step()`, skipped on every rank when the loss (or, without ZeRO,
    the all-reduced gradients) of any rank is not finite; then DeepSpeed's own global gradient
    norm (ZeRO) is checked. The schedule advances either way (finite.py). Returns None or
    (what, value, rank, row ids, update applied)."""
    engine, scheduler = policy.engine, policy.scheduler
    local = None
    if not math.isfinite(local_loss):
        local = ("loss", local_loss)
    elif not engine.zero_optimization():  # whole gradients, all-reduced in backward
        found = first_nonfinite((n, p.grad) for n, p in engine.module.named_parameters())
        local = ("gradient norm", found[1]) if found else None
    bad = _first_bad(local, row_ids, engine.device)
    lr_step = scheduler.last_epoch
    with no_update(scheduler.optimizer) if bad else nullcontext():
        engine.step()
    norm = engine.get_global_grad_norm()
    if bad is None and norm is not None and not math.isfinite(norm):
        # a global norm: the same on every rank; rank 0 is named
        bad = _first_bad(("gradient norm", float(norm)), row_ids, engine.device)
        bad = (*bad[:4], engine.was_step_applied())
    if bad is not None and scheduler.last_epoch == lr_step:
        scheduler.step()  # DeepSpeed holds the schedule on a skipped step; the plan does not
    return bad


def _first_bad(local, row_ids: list[str], device):
    """Every rank's verdict on the step: None when all are finite, else (what, value, rank,
    row ids, False) of the lowest rank that is not."""
    import torch.distributed as dist

    flag = torch.tensor([0.0 if local is None else 1.0], device=device)  # nccl: on the GPU
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    if not flag.item():
        return None
    verdicts = _gather(None if local is None else (*local, row_ids))
    rank = next(r for r, v in enumerate(verdicts) if v is not None)
    what, value, ids = verdicts[rank]
    return what, value, rank, ids, False


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
