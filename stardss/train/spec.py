"""What every Ray Train worker receives: the sections of the job it uses, typed, and where its
steps come from. Built once on the driver; the worker loop reads nothing else."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from ..config.schema import LossConfig, ModelConfig, ReferenceConfig, TrainConfig, WandbConfig
from .feed import StepSource


@dataclass
class TrainingSpec:
    train: TrainConfig
    loss: LossConfig
    model: ModelConfig
    """The trainee: `name_or_path` is the folder (or Hub id) it starts from, `tokenizer` the
    tokenizer saved with it, both as the workers can reach them; `lora` its adapters."""
    reference: ReferenceConfig
    seed: int
    pad_id: int
    """The tokenizer's pad token: padding and empty slots."""
    max_length: int
    """data.max_length: no row is longer; with train.packing, the length of a packed sequence."""
    tracking: WandbConfig
    job_record: dict
    """The whole job as plain data, secrets redacted: logged with rank 0's W&B run and saved in
    the model folder (stardss_job.yaml)."""
    run_name: str
    tracker_group: str
    """The W&B group shared with the driver's run."""
    out_dir: str
    """The run's folder (absolute): Ray Train's storage and W&B's files."""
    deepspeed_user: dict = field(default_factory=dict)
    """The user's DeepSpeed settings (train.deepspeed_json + train.deepspeed), read on the
    driver: the JSON file need not exist on the workers."""
    snapshot_every: int = 0
    """Write the weights as a Hugging Face folder every this many steps (0 = never): the
    snapshots safety over training evaluates (eval.during_training)."""
    snapshot_dir: Optional[str] = None
    """Where the snapshots go (<out_dir>/snapshots)."""
    steps: Optional[StepSource] = None
    """Where each step's rows come from (set by run_training)."""
    reference_actors: Optional[list[Any]] = None
    """reference.placement=actor_group: the actors' handles (set by run_training)."""

    @property
    def n_steps(self) -> int:
        return self.steps.n_steps

    @property
    def tokenizer_path(self) -> str:
        return self.model.tokenizer or self.model.name_or_path
