"""The training sections of a job: train (DeepSpeed, schedule, Ray Train), loss, the frozen
reference, and model.lora (re-exported by schema.py, which assembles the job)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from ..train.kinds import KL_ESTIMATORS, LOSS_KINDS
from .fields import bounded, choice


@dataclass
class LoraConfig:
    """Low-rank adapters (PEFT LoRA) instead of full finetuning. The reference model of dss is
    then the base with the adapter disabled: no second copy of the weights."""

    r: int = bounded(0, at_least=0)
    """Adapter rank; 0 = full finetuning (no adapter)."""
    alpha: float = 16.0
    """LoRA scaling numerator (the update is scaled by alpha / r)."""
    dropout: float = bounded(0.0, at_least=0, at_most=1)
    """Dropout on the adapter's input."""
    target_modules: List[str] = field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                                 "down_proj"])
    """Module names that get adapters (Llama's attention and MLP projections by default), or
    ["all-linear"]."""
    merge: bool = True
    """The final model folder holds the merged weights (loads with AutoModelForCausalLM) and
    the adapter alone in its `adapter/` subfolder; false = the folder is the adapter only."""


@dataclass
class KLConfig:
    estimator: str = choice("k2", KL_ESTIMATORS)
    """k1 | k2 | k3 at the dataset token, or full (the whole-vocabulary KL(policy || reference))."""
    coef: float = bounded(0.5, at_least=0)
    """lambda_KL (the paper's kl_scale)."""


@dataclass
class LossConfig:
    kind: str = choice("dss", LOSS_KINDS)
    """sft: CE on every response token. rs: drop examples whose full response the guardrail
    judges unsafe, CE on the rest. reweight: CE scaled by the example's full-response P(safe).
    dss: w*CE + (1-w)*coef*KL to the frozen initial model, w = the token's STAR weight.
    kl_only: coef*KL on every response token (dss with every weight 0; no guardrail)."""
    kl: KLConfig = field(default_factory=KLConfig)
    """The KL term of dss."""
    rs_threshold: float = bounded(0.5, at_least=0, at_most=1)
    """rs keeps an example when its full-response P(safe) is at least this."""
    rs_mode: str = choice("drop", ("drop", "zero_weight"))
    """What rs does with the other examples. drop: left out before the steps are planned
    (fewer steps). zero_weight: kept in their batches with weight 0, so their tokens stay in
    the loss's denominator and the step count is that of sft (the authors' code). Data that
    is all unsafe trains nothing either way: the run writes the initial model, with a
    warning."""


@dataclass
class ReferenceConfig:
    """The frozen reference model of dss and kl_only: the initial model, never updated."""

    placement: str = choice("in_worker", ("in_worker", "actor_group"))
    """in_worker: every Train worker hosts the reference beside the policy (partitioned like
    it under ZeRO-3). actor_group: a separate group of Ray actors hosts it and returns only
    log p_ref of each dataset token (k1/k2/k3 estimators; not with model.lora)."""
    logprobs: str = choice("live", ("live", "cached"))
    """live: a reference forward pass at every step. cached: k1/k2/k3 need only log p_ref of
    each dataset token, which is fixed for a row, so it is computed the first time a row is
    trained (shared between workers) and reused in every later epoch. full KL stays live."""
    offload: bool = False
    """in_worker under ZeRO-3: keep the reference's partitioned weights in CPU memory
    (DeepSpeed offload_param), gathered to the device layer by layer for its forward pass."""
    actors: int = bounded(1, at_least=1)
    """actor_group: reference replicas; worker r asks replica r % actors."""
    num_cpus: float = bounded(0.5, at_least=0)
    """actor_group: CPUs each replica reserves."""
    num_gpus: float = bounded(0.0, at_least=0)
    """actor_group: GPUs each replica reserves."""
    timeout_s: float = bounded(300.0, above=0)
    """actor_group: longest one call may take before the run fails naming the replica."""
    start_timeout_s: float = bounded(600.0, above=0)
    """actor_group: longest the replicas may take to start (load the model) before the run
    fails naming how many were still starting."""


@dataclass
class OffloadConfig:
    """DeepSpeed ZeRO-Offload: trade device memory for host memory and PCIe traffic."""

    optimizer: str = choice("none", ("none", "cpu"))
    """none | cpu: keep the optimizer state (and its step) on the CPU (ZeRO 1-3)."""
    params: str = choice("none", ("none", "cpu"))
    """none | cpu: keep the partitioned parameters on the CPU (ZeRO-3 only)."""


@dataclass
class TrainConfig:
    workers: int = bounded(2, at_least=1)
    """Ray Train workers (data-parallel DeepSpeed ranks)."""
    cpus_per_worker: float = bounded(0.5, at_least=0)
    """CPUs each worker reserves; leave room for the guardrail pool."""
    use_gpu: bool = False
    """One GPU per worker."""
    resources_per_worker: Dict[str, float] = bounded(above=0, default_factory=dict)
    """Custom Ray resources each worker reserves besides CPU/GPU, e.g. {trainer: 1}: name one
    that only your training nodes advertise (the clusters/ configs give each GPU training node
    `trainer: <its GPUs>`)."""
    placement_strategy: str = choice("PACK", ("PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"))
    """Ray placement group strategy of the worker group: PACK (as few nodes as possible, so
    ranks of a node talk over NVLink/shared memory), SPREAD, STRICT_PACK or STRICT_SPREAD."""
    zero_stage: int = choice(2, (0, 1, 2, 3))
    """DeepSpeed ZeRO stage: 0, 1, 2 or 3."""
    bf16: bool = False
    """Train in bf16 (DeepSpeed bf16 section); fp32 otherwise."""
    epochs: int = bounded(1, at_least=1)
    """Passes over the training rows."""
    drop_last: bool = False
    """false: an epoch's last step is short (empty slots, every row trained). true: each epoch
    has rows // global batch full steps and the rows left over are not trained that epoch
    (a different remainder each epoch; the authors' step count)."""
    max_steps: Optional[int] = bounded(None, at_least=1)
    """Stop after this many optimizer steps (null = epochs decide)."""
    micro_batch_size: int = bounded(4, at_least=1)
    """Rows per worker per forward pass."""
    grad_accum: int = bounded(1, at_least=1)
    """Micro-batches per worker per optimizer step. Global batch = micro * accum * workers."""
    packing: bool = False
    """Pack each micro-batch's rows into sequences of up to data.max_length tokens (position
    ids restart at each row, attention never crosses rows) instead of padding every row to
    the longest: less padding, the same loss, gradients and STAR weights. Needs a model whose
    attention masks packed rows from position ids (transformers' Llama, Mistral, Qwen, Gemma
    ... under sdpa, eager or flash-attention)."""
    group_by_length: bool = False
    """Order each worker's rows of a step by length before cutting micro-batches, so rows of
    similar length pad together; the step's rows, its loss and the split over workers are
    unchanged."""
    lr: float = bounded(5e-6, above=0)
    """Peak learning rate."""
    min_lr: float = bounded(5e-8, at_least=0)
    """Floor of the cosine schedule."""
    warmup_ratio: float = bounded(0.03, at_least=0, at_most=1)
    """Share of the steps spent in linear warmup."""
    betas: List[float] = bounded(at_least=0, below=1, default_factory=lambda: [0.9, 0.95])
    """Adam betas."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    grad_clip: float = bounded(1.0, at_least=0)
    """Gradient-norm clip (0 = none)."""
    log_every: int = bounded(10, at_least=1)
    """Print a progress line every this many steps (rank 0)."""
    health_check_interval_s: float = bounded(0.2, above=0)
    """Ray Train controller poll interval; Ray's default makes every report cost ~2 s."""
    timeout_s: float = bounded(3600.0, above=0)
    """Longest a training run may take before it is failed."""
    offload: OffloadConfig = field(default_factory=OffloadConfig)
    """ZeRO-Offload of optimizer state and parameters."""
    deepspeed_json: Optional[str] = None
    """Path of your own DeepSpeed JSON, merged over the generated config (nested keys merge);
    `deepspeed` entries merge over that."""
    deepspeed: Dict[str, Any] = field(default_factory=dict)
    """Your own DeepSpeed config entries, merged over the generated one (nested keys merge),
    e.g. {zero_optimization: {stage3_param_persistence_threshold: 0}}. Batch sizes come from
    micro_batch_size / grad_accum / workers; repeating them here with other values is an
    error."""
    checkpoint_every: int = bounded(0, at_least=0)
    """Save a resumable checkpoint (DeepSpeed state) every this many optimizer steps; 0 = only
    the final model folder."""
    keep_checkpoints: int = bounded(2, at_least=1)
    """Checkpoints Ray Train keeps (the newest); the final model folder counts as one."""
    max_nonfinite_steps: int = bounded(0, at_least=0)
    """Steps whose loss or gradient norm is non-finite that are skipped (no parameter update)
    before the run fails; 0 = the first one fails it."""
    max_failures: int = bounded(0, at_least=-1)
    """Times Ray Train restarts a failed worker group; it resumes from the last checkpoint
    (-1 = no limit)."""
    start_timeout_s: float = bounded(600.0, above=0)
    """How long Ray Train waits for the worker group's resources at each start and restart
    (train.max_failures + 1 tries; an autoscaling cluster adds nodes meanwhile); then the run
    fails naming what the workers need and the nodes lost (Ray's
    RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S, set from this)."""
    resume: str = choice("never", ("never", "auto"))
    """never: every run starts at step 0. auto: a run whose earlier attempt in the same
    out_dir did not finish (the driver was killed, the job failed) continues from that
    attempt's last checkpoint (train.checkpoint_every), with the same plan; the job must
    train the same data the same way, else it is refused naming what differs. Nothing to
    resume (no earlier attempt, or it finished): starts at step 0."""
