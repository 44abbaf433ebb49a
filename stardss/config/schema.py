"""The job schema: one dataclass per component, a docstring under every field, the allowed
values and bounds on the field (fields.py). The training sections (train, loss, reference,
model.lora) are in training.py, the eval sections in evaluation.py, a data source and a
guardrail (used in several sections) in sources.py; every section can be imported from here.

A job YAML in jobs/ is merged onto these dataclasses (OmegaConf structured config), so an
unknown key or a value of the wrong type fails at load time with the key's name; what one
field alone cannot say is checked in `validate.py`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from .evaluation import (
    AttackConfig,
    DuringTrainingConfig,
    EvalConfig,
    EvalSetConfig,
    GenerationConfig,
    JudgeConfig,
    ServerConfig,
    VerdictConfig,
)
from .fields import bounded, choice
from .sources import GuardrailConfig, RuleConfig, SourceConfig
from .training import KLConfig, LoraConfig, LossConfig, OffloadConfig, ReferenceConfig, TrainConfig

__all__ = ["ActorsConfig", "AttackConfig", "AuthorsTransformConfig", "ChunkConfig", "DataConfig",
           "DuringTrainingConfig", "EvalConfig", "EvalSetConfig", "GenerationConfig",
           "GuardrailConfig", "JudgeConfig", "ServerConfig", "VerdictConfig",
           "JobConfig", "KLConfig", "LoraConfig", "LossConfig", "ModelConfig", "OffloadConfig",
           "ReferenceConfig", "RuleConfig", "ScoringConfig", "SourceConfig", "StarConfig",
           "SubmitConfig", "TrackingConfig", "TrainConfig", "WandbConfig"]

CUSTOM_ONLY = ("CPU", "GPU", "memory", "object_store_memory")
"""Resources with keys of their own: never in a custom-resources mapping."""


@dataclass
class DataConfig:
    sources: List[SourceConfig] = field(default_factory=list)
    """The training mixture."""
    mix_size: Optional[int] = bounded(None, at_least=1)
    """Rows in the mixture when ratios are given; null = the largest size no source has to
    repeat rows for. Which rows were used and which were not is counted in the run summary."""
    max_length: int = bounded(2048, at_least=1)
    """Maximum tokens of prompt + response in the trainee's tokenisation; longer rows are bad
    rows."""
    on_bad_row: str = choice("error", ("error", "quarantine"))
    """error: stop at the first malformed row, naming file and row. quarantine: write it with the
    reason to `<out_dir>/quarantine.jsonl`, count it in the summary, and go on."""
    shuffle: bool = True
    """Shuffle the mixture with the job seed."""
    train_turns: str = choice("last", ("last", "all"))
    """last: train on (and score) the last assistant turn of a conversation; all: every
    assistant turn, each scored with the conversation up to it."""
    shards_dir: Optional[str] = None
    """Where the tokenised rows are written (columnar shards, one folder per source named by
    its content, tokenizer and max_length); null = <out_dir>/shards. Share one folder between
    jobs (on shared storage on a cluster) to reuse them."""


@dataclass
class ModelConfig:
    name_or_path: str = "???"
    """Hugging Face Hub id (e.g. meta-llama/Llama-3.2-1B-Instruct) or a local model folder."""
    revision: Optional[str] = None
    """Hub revision (branch, tag or commit) for name_or_path."""
    tokenizer: Optional[str] = None
    """Tokenizer id or folder; null = name_or_path."""
    chat_template: Optional[str] = None
    """Jinja chat template overriding the tokenizer's; needed for tokenizers without one."""
    lora: LoraConfig = field(default_factory=LoraConfig)
    """LoRA adapters (r > 0) instead of full finetuning."""


@dataclass
class ActorsConfig:
    """The guardrail actors of the scoring pool and what each one reserves."""

    min: int = bounded(1, at_least=1)
    """Actors started with the pool and kept when idle (at least 1)."""
    max: int = 2
    """Most actors at once: the pool adds actors up to this while batches queue up (>= min)."""
    num_cpus: float = bounded(0.5, at_least=0)
    """CPUs each guardrail actor reserves."""
    num_gpus: float = bounded(0.0, at_least=0)
    """GPUs each guardrail actor reserves."""
    batch_size: int = bounded(32, at_least=1)
    """Responses per request sent to an actor."""
    resources: Dict[str, float] = bounded(above=0, default_factory=dict)
    """Custom Ray resources each actor reserves besides CPU/GPU, e.g. {guard: 1}. Name one
    that only your guardrail nodes advertise (the clusters/ configs give each GPU guard node
    `guard: <its GPUs>`): the actors land there, and the autoscaler starts such nodes."""
    nice: int = bounded(0, at_least=0, at_most=19)
    """Unix niceness (0-19) of each actor's process. Above 0, Train workers and Ray's own
    processes win the CPU when they share cores with the guardrail (scoring.colocate=true, a
    laptop): stream mode scores ahead of training, so the pool has time to spare."""


@dataclass
class ScoringConfig:
    mode: str = choice("stream", ("stream", "precompute", "cache"))
    """stream: the pool scores while Ray Train trains, a few steps ahead (`prefetch_steps`).
    precompute: score every row first, then train. cache: every score must already be in the
    STAR cache (e.g. from `stardss score`); a missing one fails the run, naming rows. All three
    give the same weights. loss.kind=rs always scores first: it must see every full-response
    verdict before it can plan batches."""
    prefetch_steps: int = bounded(4, at_least=1)
    """stream: optimizer steps scored ahead of the slowest training worker (backpressure);
    scoring pauses when this many scored steps wait unconsumed."""
    actors: ActorsConfig = field(default_factory=ActorsConfig)
    """The Ray actor pool: how many guardrail replicas, their resources and batch size."""
    max_in_flight: int = bounded(2, at_least=1)
    """Requests queued per actor at once (backpressure)."""
    timeout_s: float = bounded(300.0, above=0)
    """Longest a running batch may take; an actor over it is taken as stuck and replaced."""
    start_timeout_s: float = bounded(600.0, above=0)
    """Longest an actor may take to start (model loads can be slow). The pool's first `min`
    actors failing this fails the run; an actor added later is dropped with a warning."""
    max_restarts: int = bounded(3, at_least=0)
    """Replacement actors allowed per score() call for dead or stuck actors; 0 = the first
    failure fails the run."""
    progress_timeout_s: float = bounded(900.0, above=0)
    """Fail the run when no batch has finished for this long."""
    idle_s: float = bounded(30.0, at_least=0)
    """An actor above `actors.min` idle this long with nothing queued is stopped."""
    colocate: bool = False
    """false: guardrail actors never share a node with Train workers. On a cluster (ray.address
    set) that takes a custom resource in scoring.actors.resources and another in
    train.resources_per_worker, with no node advertising both (checked at start, naming the
    node). true: actors may run on the training nodes (e.g. spare GPU memory there)."""
    request_resources: bool = True
    """On a cluster (ray.address set), ask the Ray autoscaler for room for the actors the pool
    wants (ray.autoscaler.sdk.request_resources), so guardrail nodes come up before they are
    needed; the request is withdrawn when the pool closes."""


@dataclass
class ChunkConfig:
    unit: str = choice("words", ("words", "tokens"))
    """words: whitespace-separated words (the authors' code). tokens: the trainee's tokens."""
    size: int = bounded(5, at_least=1)
    """Words or tokens per chunk (the paper's default is 5 words)."""


@dataclass
class AuthorsTransformConfig:
    """The processors of the authors' sampled guard `generate` (secml-lab-vt/Optimus,
    star-dss/config/model/default.yaml `generation_args`), applied in Hugging Face's order to the
    one-pass logits at the decision position (stardss/star/transform.py)."""

    repetition_penalty: float = bounded(1.2, above=0, at_most=10)
    """Logits of the token ids already in the guard prompt: divided by it where positive,
    multiplied where negative; 1 = off."""
    temperature: float = bounded(0.2, above=0, at_most=100)
    """Logits divided by it (after the penalty); 1 = off."""
    top_k: int = bounded(50, at_least=0)
    """Only the k largest processed logits stay (ties kept); 0 = off."""
    top_p: float = bounded(0.9, above=0, at_most=1)
    """Then only the smallest set of tokens with softmax mass >= top_p stays; 1 = off."""


@dataclass
class StarConfig:
    chunk: ChunkConfig = field(default_factory=ChunkConfig)
    """How responses are cut into cumulative prefixes."""
    combine: str = choice("mean", ("mean", "min", "weighted"))
    """mean | min | weighted: how the P(safe) of several guardrails combine (weighted: the
    mean with each guardrail's `weight`)."""
    threshold: Optional[float] = bounded(None, at_least=0, at_most=1)
    """null = soft token weights (the paper); a number = weight 1 where P(safe) >= it, else 0."""
    cache: bool = True
    """Reuse prefix scores from the content-addressed STAR cache (and add new ones to it)."""
    cache_dir: Optional[str] = None
    """Where the cache lives; null = <out_dir>/star_cache. Share one folder between jobs to
    share scores: entries are keyed by guardrail fingerprint, chunking and text."""
    transform: str = choice("raw", ("raw", "authors"))
    """raw: P(safe) = the softmax over the two label logits (deterministic, soft weights).
    authors: the authors' processed value (repetition penalty, temperature, top-k, top-p of
    `star.authors` over the full vocabulary, then the two-label softmax), near-binary: to
    reproduce the paper. Causal-LM guardrails only; it is part of the guardrail fingerprint."""
    authors: AuthorsTransformConfig = field(default_factory=AuthorsTransformConfig)
    """The knobs of `transform: authors` (the authors' generation defaults)."""


@dataclass
class WandbConfig:
    """Weights & Biases: the driver logs the guardrail pool's metrics, Ray Train rank 0 the
    training metrics, as two runs of one group named after the job and run."""

    mode: str = choice("offline", ("offline", "online", "disabled"))
    """offline | online | disabled. offline needs no network (sync later with `wandb sync`);
    online reads the API key from the environment (WANDB_API_KEY), never from the job."""
    project: str = "stardss"
    """W&B project."""
    entity: Optional[str] = None
    """W&B entity (team or user); null = the account's default."""
    dir: Optional[str] = None
    """Where W&B writes its files; null = <run out dir>/wandb."""
    tags: List[str] = field(default_factory=list)
    """W&B tags of the runs."""


@dataclass
class TrackingConfig:
    wandb: WandbConfig = field(default_factory=WandbConfig)
    """Weights & Biases (set wandb.mode=disabled to turn it off)."""


@dataclass
class SubmitConfig:
    """`stardss submit`: how the job travels to a Ray cluster through the Jobs API. The working
    dir is the folder submitted from (or --working-dir); secrets are listed by name only."""

    excludes: List[str] = field(default_factory=list)
    """gitignore-style patterns left out of the working-dir upload, besides stardss's own (.git,
    .venv, runs, wandb, caches, ...) and the folder's .gitignore / .rayignore. Ray refuses an
    upload of 512 MiB or more: large data belongs on storage the cluster reads."""
    install: str = choice("none", ("none", "working_dir"))
    """none: the cluster's Python already has stardss (its image or a shared venv).
    working_dir: Ray pip-installs the uploaded folder (a stardss checkout) with `extras` into a
    virtualenv for the job, on top of the node's packages (needs a package index)."""
    extras: List[str] = field(default_factory=list)
    """Extras of the install=working_dir install, e.g. [dev]."""
    pip: List[str] = field(default_factory=list)
    """More requirements installed for the job, e.g. ["peft==0.21.2"]."""
    installer: str = choice("pip", ("pip", "uv"))
    """pip | uv: the Ray runtime_env plugin that installs `install` and `pip` (uv must be on the
    nodes)."""
    env_vars: Dict[str, str] = field(default_factory=dict)
    """Environment variables of the job, e.g. {HF_HOME: /shared/hf}; not secrets (`secrets`).
    WANDB_MODE is set from tracking.wandb.mode."""
    secrets: List[str] = field(default_factory=list)
    """Names of environment variables (e.g. WANDB_API_KEY, HF_TOKEN) whose values are read from
    the submitter's environment at submit time and given to the job; a name only, never a value.
    Also `--secret NAME`."""
    hf_offline: bool = False
    """Set HF_HUB_OFFLINE=1 and HF_DATASETS_OFFLINE=1 in the job (a cluster without hub access)."""
    python: str = "python"
    """The cluster's Python that runs the job (`PYTHON -m stardss ...`), as the head's shell finds
    it; e.g. /opt/venv/bin/python when the head's `ray start` ran from a virtualenv that was not
    activated. With submit.install=working_dir or submit.pip, `python` is the job's virtualenv."""


@dataclass
class JobConfig:
    name: str = "job"
    """Run name; used in out_dir and the W&B group."""
    out_dir: str = "runs/${name}"
    """Where checkpoints, quarantine, STAR files and results go."""
    seed: int = 42
    """Seeds data order, model init and sampling."""
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    guardrails: List[GuardrailConfig] = field(default_factory=list)
    """Guardrails that score every response prefix."""
    scoring: ScoringConfig = field(default_factory=ScoringConfig)
    star: StarConfig = field(default_factory=StarConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    reference: ReferenceConfig = field(default_factory=ReferenceConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    """Experiment tracking; the job config is logged with secrets redacted."""
    ray: Dict[str, Any] = field(default_factory=dict)
    """Keyword arguments for ray.init (e.g. address, num_cpus); empty = a local Ray."""
    submit: SubmitConfig = field(default_factory=SubmitConfig)
    """How `stardss submit` ships the job to a Ray cluster (working-dir upload, installs,
    environment, secrets by name)."""
