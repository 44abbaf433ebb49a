"""The sections a job uses in more than one place: a data source (training mixtures and eval
sets) and a guardrail (STAR scoring and eval judges). schema.py re-exports them."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from ..guard.registry import GUARD_KINDS
from .fields import bounded, choice

ROW_FIELDS = ("prompt", "response", "system", "id", "answer", "messages")
"""The fields of a row (stardss/data/rows.py) that a source's `columns` may fill."""


@dataclass
class SourceConfig:
    """One data source of a mixture."""

    path: str = "???"
    """A JSONL/Parquet file, a folder saved by `datasets`, a Hub dataset id, or, with
    kind=toy, the name of a split of the embedded demo world."""
    kind: str = choice("auto", ("auto", "jsonl", "parquet", "hf", "toy"))
    """auto | jsonl | parquet | hf | toy. `auto` picks by file suffix, then Hub/disk dataset."""
    split: str = "train"
    """Split to read for kind=hf."""
    ratio: Optional[float] = bounded(None, above=0)
    """Share of the mixture taken from this source. Either every source has a ratio or none."""
    name: Optional[str] = None
    """Label used in summaries and quarantine records; defaults to `path`."""
    subset: Optional[str] = None
    """Hub datasets: the configuration ("subset" on the Hub) to read, passed as `name` to
    datasets.load_dataset, e.g. `main` for openai/gsm8k; null = the dataset's default."""
    columns: Dict[str, str] = field(default_factory=dict)
    """Where row fields come from, {field: column}; fields are prompt, response, system, id,
    answer and messages. E.g. {prompt: question, response: answer} reads GSM8K as chat rows.
    Mapped columns are renamed (the others pass unchanged); a row without a mapped column is a
    bad row naming row and column, and a Hub/Parquet dataset without it fails before reading.
    An identity entry ({prompt: prompt}) only requires the column: a recipe's contract."""
    where: Dict[str, Any] = field(default_factory=dict)
    """Keep only the rows whose columns equal these values (the dataset's column names, before
    `columns` renames), e.g. {is_safe: false} for BeaverTails' unsafe responses. Rows left out
    are not read (neither good nor bad in the summary); a row without the column is a bad row."""
    answer_regex: Optional[str] = None
    """Eval tasks: each row's `answer` becomes the first group (or the whole match) of this
    regular expression, searched in it; e.g. '####\\s*(.+?)\\s*$' keeps the final answer of
    GSM8K's worked solution. A row whose answer is missing or does not match is a bad row."""
    system: Optional[str] = None
    """A system prompt given to every row of this source that has none (e.g. the answer format
    an eval task is scored by)."""


@dataclass
class RuleConfig:
    """One pattern of the rule-based guardrail."""

    pattern: str = "???"
    """Python regular expression, searched case-insensitively in the assistant response."""
    weight: float = 0.0
    """Added to the safety logit for each match: negative = evidence of harm, positive = of
    safety."""
    note: str = ""
    """Why the rule exists (shown nowhere but the job file; keep it honest)."""


@dataclass
class ServerConfig:
    """An OpenAI-compatible server: a judge or a generation backend (chat completions), or a
    remote guardrail (completions with logprobs)."""

    base_url: str = "???"
    """The API's base, e.g. https://api.openai.com/v1 or http://localhost:8000/v1."""
    model: str = "???"
    """The model name the server serves (`model` of the request)."""
    api_key_env: Optional[str] = None
    """Name of the environment variable holding the API key (never the key itself); null =
    no key (a local server)."""
    concurrency: int = bounded(8, at_least=1)
    """Requests in flight at once."""
    timeout_s: float = bounded(120.0, above=0)
    """Longest one request may take."""
    max_retries: int = bounded(5, at_least=0)
    """Retries of a request answered 429 or 5xx, or that timed out or could not connect, with
    exponential backoff (Retry-After is honoured)."""
    backoff_s: float = bounded(1.0, above=0)
    """First retry's wait; doubled after each."""


@dataclass
class GuardrailConfig:
    kind: str = choice("rules", GUARD_KINDS)
    """Guardrail family: rules | llama_guard (3 and 4) | granite_guardian (3.0-3.3) |
    shieldgemma | wildguard | qwen3guard (Qwen3Guard-Gen) | qwen3guard_stream | nemoguard
    (Llama-3.1-NemoGuard-8B-ContentSafety) | hf_classifier | remote (a guard behind an
    OpenAI-compatible completions server, its prompt format `family` rendered here)."""
    name_or_path: Optional[str] = None
    """Hub id or local folder of the guardrail model (model-backed kinds)."""
    revision: Optional[str] = None
    """Hub revision (branch, tag or commit) of name_or_path."""
    mode: str = choice("packed", ("packed", "naive"))
    """packed: score all prefixes of a response sharing one pass over it (exact, fast).
    naive: one forward pass per prefix prompt (the reference)."""
    batch_size: int = bounded(16, at_least=1)
    """Sequences per forward pass (prefix prompts in naive mode, chunk tails in packed mode)."""
    dtype: str = choice("float32", ("float32", "bfloat16", "float16"))
    """float32 | bfloat16 | float16 for the guardrail's weights."""
    device: str = "auto"
    """auto (cuda when available) | cpu | cuda | cuda:N."""
    categories: Optional[List[str]] = None
    """llama_guard: category codes to check (e.g. [S1, S2]); null = all of the template's."""
    excluded_categories: List[str] = field(default_factory=list)
    """llama_guard: category codes left out of the prompt."""
    risk_name: str = "harm"
    """granite_guardian: the guardian_config risk to judge."""
    policy: Optional[str] = None
    """shieldgemma: the safety policy text the model judges against; null = the adapter's
    default harm policy."""
    safe_label: Optional[str] = None
    """hf_classifier: the label (in the model's id2label) that means safe."""
    bias: float = 0.0
    """rules: safety logit before any pattern matches; P(safe) = sigmoid(bias + sum of weights)."""
    rules: List[RuleConfig] = field(default_factory=list)
    """rules: the patterns."""
    controversial: str = choice("unsafe", ("unsafe", "safe"))
    """qwen3guard / qwen3guard_stream: what a "Controversial" verdict counts as: unsafe (the
    model card's strict mode) or safe (its loose mode)."""
    trust_remote_code: bool = False
    """qwen3guard_stream: the model's code ships with its weights (Hugging Face remote code);
    it is loaded only when this is true."""
    weight: float = bounded(1.0, at_least=0)
    """star.combine=weighted: this guardrail's share of the weighted mean of P(safe)."""
    family: Optional[str] = None
    """remote: the prompt format the served model reads (a causal-LM kind: llama_guard,
    granite_guardian, shieldgemma, wildguard, qwen3guard, nemoguard), rendered here with the
    tokenizer of `name_or_path`."""
    top_logprobs: int = bounded(20, at_least=1)
    """remote: the top log-probs asked at the decision position (vLLM serves up to its
    --max-logprobs, 20 by default); a label not among them refuses the row (never a bound)."""
    server: Optional[ServerConfig] = None
    """remote: the OpenAI-compatible completions endpoint serving the guard (vLLM, SGLang),
    with concurrency, timeout, retries and the env variable holding its bearer token."""
