"""A run's checkpoints, kept by Ray Train.

    resumable  every `train.checkpoint_every` steps: every rank's DeepSpeed state (its ZeRO
               shards, optimizer and schedule) and the step log so far. Ray Train merges the
               ranks' directories into one; after a worker failure (`train.max_failures`) it
               restarts the worker group, which resumes here at the next step of the same
               seeded plan, so the run ends at the same step count with the same data order.
    final      a Hugging Face folder: safetensors, the tokenizer with its chat template, the job
               config (`stardss_job.yaml`, secrets redacted) and the per-step log
               (`stardss_train_log.json`). With LoRA: the merged model plus the adapter alone in
               `adapter/`, or only the adapter (`model.lora.merge: false`).
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field

STATE_FILE = "stardss_state.json"
DEEPSPEED_DIR = "deepspeed"
LOG_FILE = "stardss_train_log.json"
JOB_FILE = "stardss_job.yaml"


@dataclass
class Resume:
    step: int = 0
    """First optimizer step to run (0 = a fresh start)."""
    log: list = field(default_factory=list)
    """Per-step metrics of the steps before `step`."""
    resumed_from: list = field(default_factory=list)
    """Steps this run has resumed at, one per restart."""
    finished: bool = False
    """The latest checkpoint is the final folder: a worker died after the last report (at the
    closing barrier), so the restarted group has nothing left to train or report."""


def restore(policy) -> Resume:
    """Where this attempt starts: Ray Train's latest checkpoint of the run, if any."""
    import ray.train

    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None:
        return Resume()
    with checkpoint.as_directory() as folder:
        if not os.path.exists(os.path.join(folder, STATE_FILE)):
            if os.path.exists(os.path.join(folder, LOG_FILE)):
                return Resume(finished=True)  # Ray Train's result is that final checkpoint
            raise RuntimeError(f"resume: the run's latest checkpoint {checkpoint.path} has "
                               f"neither {STATE_FILE} nor {LOG_FILE}")
        with open(os.path.join(folder, STATE_FILE)) as f:
            state = json.load(f)
        path, _ = policy.engine.load_checkpoint(
            os.path.join(folder, DEEPSPEED_DIR), tag=state["tag"],
            load_module_strict=not policy.lora, load_optimizer_states=True,
            load_lr_scheduler_states=True)
    if path is None:
        raise RuntimeError(f"resume: no DeepSpeed state under tag {state['tag']!r} in the "
                           f"checkpoint of step {state['step']}")
    return Resume(state["step"], state["log"], state["resumed_from"] + [state["step"]])


def save_resumable(policy, step: int, log: list, resume: Resume, rank: int) -> None:
    """Every rank writes its DeepSpeed shards; rank 0 also the step log. `step` steps are done."""
    import ray.train
    from ray.train import Checkpoint

    tag = f"step{step}"
    with tempfile.TemporaryDirectory(prefix="stardss-ckpt-") as tmp:
        # LoRA: the frozen base is the initial model, reloaded from model_path on resume.
        policy.engine.save_checkpoint(os.path.join(tmp, DEEPSPEED_DIR), tag=tag,
                                      exclude_frozen_parameters=policy.lora)
        if rank == 0:
            with open(os.path.join(tmp, STATE_FILE), "w") as f:
                json.dump({"step": step, "tag": tag, "log": log,
                           "resumed_from": resume.resumed_from}, f)
        ray.train.report({"step": step, "loss": log[-1]["loss"]},
                         checkpoint=Checkpoint.from_directory(tmp))


def save_final(policy, spec, rank: int, log: list, metrics: dict) -> None:
    """The Hugging Face folder, reported as the run's last checkpoint (rank 0 writes it; under
    ZeRO-3 every rank takes part in gathering the weights). `spec`: the TrainingSpec."""
    import ray.train
    from ray.train import Checkpoint

    state = _gathered_state(policy, spec)
    _check_finite(policy, state)
    if rank != 0:
        ray.train.report(metrics, checkpoint=None)
        return
    with tempfile.TemporaryDirectory(prefix="stardss-final-") as tmp:
        _write_model(policy, spec, state, tmp)
        with open(os.path.join(tmp, LOG_FILE), "w") as f:
            # The folder may be pushed to a hub: the job's secrets (env vars) stay out of it.
            json.dump({"metrics": metrics, "steps": log, "job": spec.job_record}, f, indent=1)
        ray.train.report(metrics, checkpoint=Checkpoint.from_directory(tmp))


def _check_finite(policy, state) -> None:
    """Every parameter finite, or RuntimeError naming the first that is not, on every rank
    (a collective), before anything is written. Under ZeRO-3 rank 0 checks the gathered state;
    otherwise each rank its whole module."""
    import torch.distributed as dist

    from .finite import describe, first_nonfinite

    # ZeRO-3 ranks other than 0 see empty placeholders (skipped) where no state was gathered.
    named = state.items() if state is not None else policy.engine.module.named_parameters()
    local = first_nonfinite(named)
    found: list = [None] * dist.get_world_size()
    dist.all_gather_object(found, local)
    for r, bad in enumerate(found):
        if bad is not None:
            raise RuntimeError(f"parameter {bad[0]} is not finite ({describe(bad[1])}) on rank "
                               f"{r} after training: no model written")


def save_snapshot(policy, spec, rank: int, step: int) -> None:
    """The weights after `step` as a Hugging Face folder <spec.snapshot_dir>/step_<step>/, for
    safety over training (every rank takes part in the gather under ZeRO-3; rank 0 writes).
    Written under a temporary name and renamed when complete, so a reader never sees half a
    folder; a snapshot already there (a resumed run) is kept."""
    state = _gathered_state(policy, spec)
    folder = os.path.join(spec.snapshot_dir, f"step_{step}")
    if rank != 0 or os.path.isdir(folder):
        return
    os.makedirs(spec.snapshot_dir, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".step_{step}-", dir=spec.snapshot_dir)
    _write_model(policy, spec, state, tmp)
    os.rename(tmp, folder)


def _gathered_state(policy, spec):
    """Under ZeRO-3 the full 16-bit state dict (a collective: every rank calls it); else None
    (the module holds whole parameters)."""
    zero3 = spec.train.zero_stage == 3
    return policy.engine._zero3_consolidated_16bit_state_dict() if zero3 else None


def _write_model(policy, spec, state, folder: str) -> None:
    """Weights (merged and adapter with LoRA), tokenizer and job file into `folder`."""
    if policy.lora:
        _save_lora(policy.engine.module, state, spec.model, spec.train.bf16, folder)
    else:
        policy.engine.module.save_pretrained(folder, state_dict=state, safe_serialization=True)
    _save_tokenizer_and_job(spec, folder)


def _save_lora(peft_model, state, model_cfg, bf16: bool, folder: str) -> None:
    """Adapter-only and merged folders from the trained PeftModel (or, under ZeRO-3, from its
    gathered state dict, loaded into a host copy of `model_cfg` (ModelConfig: the base folder
    and its LoRA): the engine's weights are partitioned)."""
    from .engine import add_lora, load_causal_lm, torch_dtype

    lora = model_cfg.lora
    if state is not None:  # training is over: a plain host copy (no ZeRO-3 partitioning)
        base, _ = load_causal_lm(model_cfg.name_or_path, torch_dtype(bf16), {})
        peft_model = add_lora(base, lora)
        missing, unexpected = peft_model.load_state_dict(state, strict=False)
        if unexpected or any("lora_" in k for k in missing):
            raise RuntimeError(f"LoRA save: gathered state does not fit the adapter model "
                               f"(unexpected {unexpected[:3]}, missing {missing[:3]})")
    adapter_dir = os.path.join(folder, "adapter") if lora.merge else folder
    peft_model.save_pretrained(adapter_dir, safe_serialization=True)
    if lora.merge:
        merged = peft_model.merge_and_unload()  # training is over: merging in place is fine
        merged.save_pretrained(folder, safe_serialization=True)


def _save_tokenizer_and_job(spec, folder: str) -> None:
    from omegaconf import OmegaConf

    from ..data.tokenizer import load_tokenizer

    tokenizer = load_tokenizer(spec.tokenizer_path, spec.model.revision,
                               spec.model.chat_template)
    tokenizer.save_pretrained(folder)
    with open(os.path.join(folder, JOB_FILE), "w") as f:
        f.write(OmegaConf.to_yaml(OmegaConf.create(spec.job_record)))


def save_initial(spec, target: str, reason: str) -> None:
    """The initial model as the run's final folder, on the driver, when there is nothing to
    train (e.g. rs on data it judges all unsafe): the weights it starts from, the tokenizer,
    the job, and a log of 0 steps saying why. `spec`: the TrainingSpec."""
    from .engine import load_causal_lm, torch_dtype

    if os.path.exists(target):
        shutil.rmtree(target)
    os.makedirs(target)
    model, _ = load_causal_lm(spec.model.name_or_path, torch_dtype(spec.train.bf16), {})
    model.save_pretrained(target, safe_serialization=True)
    _save_tokenizer_and_job(spec, target)
    metrics = {"steps": 0, "untrained": reason, "train_seconds": 0.0, "wait_seconds": 0.0,
               "resumed_from": [], "reference_digests": [], "nodes": []}
    with open(os.path.join(target, LOG_FILE), "w") as f:
        json.dump({"metrics": metrics, "steps": [], "job": spec.job_record}, f, indent=1)


def copy_final(checkpoint, target: str) -> None:
    """The run's final folder, from Ray Train's last checkpoint, to `target`."""
    if os.path.exists(target):
        shutil.rmtree(target)
    checkpoint.to_directory(target)
