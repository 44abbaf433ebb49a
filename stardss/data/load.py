"""From configured sources to validated rows (and a mixture of them), with bad rows routed
to the sink so every record read is accounted for: good + bad == rows in the source; and the
training data of a run: the mixture rendered and tokenised for the trainee.

    JSONL / Parquet / Hub record -> ChatRow (rows.py) -> EncodedRow (format.py)
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..config.schema import DataConfig, ModelConfig, SourceConfig
from .format import EncodedRow, encode_row
from .mixture import mix
from .quarantine import BadRowSink
from .rows import BadRow, ChatRow, parse_row
from .sources import SourceError, read_source, source_name
from .tokenizer import load_tokenizer


def _check_names(sources: list[SourceConfig]) -> None:
    seen: dict[str, int] = {}
    for i, src in enumerate(sources):
        name = source_name(src)
        if name in seen:
            raise ValueError(f"sources[{seen[name]}] and sources[{i}] are both named {name!r}; "
                             "give one a distinct `name` so summaries and quarantine records "
                             "can tell them apart")
        seen[name] = i


def load_rows(sources: list[SourceConfig], sink: BadRowSink, *, seed: int,
              require_response: bool = True) -> tuple[dict[str, list[ChatRow]], dict]:
    """Rows per source name (in config order) and {name: {"read": good, "bad": bad}}."""
    _check_names(sources)
    rows_by_source: dict[str, list[ChatRow]] = {}
    summary: dict = {}
    for src in sources:
        name = source_name(src)
        good: list[ChatRow] = []
        bad = 0
        for index, raw in read_source(src, seed):
            try:
                if isinstance(raw, BadRow):
                    raise raw
                good.append(parse_row(raw, name, index, require_response=require_response))
            except BadRow as err:
                sink.handle(err)  # raises in error mode
                bad += 1
        rows_by_source[name] = good
        summary[name] = {"read": len(good), "bad": bad}
    return rows_by_source, summary


def load_mixture(data_cfg: DataConfig, sink: BadRowSink, *,
                 seed: int) -> tuple[list[ChatRow], dict]:
    """The training mixture and a summary {name: {"read", "bad", "available", "used",
    "repeated", "unused"}, ..., "total": rows in the mixture}."""
    sources = list(data_cfg.sources)
    if not sources:
        raise ValueError("data.sources: no data sources configured")
    given = [s.ratio is not None for s in sources]
    if any(given) and not all(given):
        raise ValueError("data.sources: give every source a ratio or none")
    rows_by_source, read_summary = load_rows(sources, sink, seed=seed)
    ratios = {source_name(s): s.ratio for s in sources} if all(given) else None
    mixture, mix_summary = mix(rows_by_source, ratios, data_cfg.mix_size, seed,
                               data_cfg.shuffle)
    summary = {name: {**read_summary[name], **mix_summary[name]} for name in read_summary}
    summary["total"] = mix_summary["total"]
    return mixture, summary


@dataclass
class TrainingData:
    """The rows of a run's mixture that parse and fit, in mixture order: rows[i] and
    encoded[i] are the same example (a mixture may repeat one: same id)."""

    rows: list[ChatRow]
    encoded: list[EncodedRow]
    summary: dict = field(default_factory=dict)
    """Per source: read, bad, available, used, repeated, unused; bad_rows; rows_encoded."""


def load_training_data(data_cfg: DataConfig, tokenizer, sink: BadRowSink, *,
                       seed: int) -> TrainingData:
    """Mixture rows that parse and fit data.max_length; the rest go to the sink (error or
    quarantine)."""
    rows, summary = load_mixture(data_cfg, sink, seed=seed)
    kept, encoded = [], []
    for row in rows:
        try:
            encoded.append(encode_row(tokenizer, row, data_cfg.max_length))
            kept.append(row)
        except BadRow as bad:
            sink.handle(bad)
    summary["bad_rows"] = sink.counts
    summary["rows_encoded"] = len(encoded)
    if not encoded:
        raise SourceError(no_usable_rows(data_cfg, summary, sink))
    return TrainingData(kept, encoded, summary)


def no_usable_rows(data_cfg: DataConfig, summary: dict, sink: BadRowSink) -> str:
    """Why a run has nothing to train on, in numbers: the rows each source gave, the bad ones
    by reason, and where they were written (so the person can open the file and see)."""
    names = [source_name(s) for s in data_cfg.sources]
    read = {n: summary[n]["read"] + summary[n]["bad"] for n in names}
    total = sum(read.values())
    if total == 0:
        files = [s.path if source_name(s) == s.path else f"{source_name(s)} ({s.path})"
                 for s in data_cfg.sources]
        return f"no usable training rows: 0 rows read from {', '.join(files)}"
    per_source = "; ".join(f"{n}: {read[n]} read, {summary[n]['bad']} bad" for n in names)
    msg = f"no usable training rows: {total} row{'s' * (total != 1)} read ({per_source})"
    bad = sink.counts
    if bad["total"]:
        reasons = ", ".join(f"{k} {v}" for k, v in sorted(bad["by_reason"].items(),
                                                        key=lambda kv: (-kv[1], kv[0])))
        msg += f", {bad['total']} bad by reason: {reasons}"
    if sink.mode == "quarantine" and bad["total"]:
        msg += f"; the bad rows are in {sink.path}"
    used = sum(summary[n].get("used", 0) for n in names)
    if used == 0 and total > bad["total"]:
        msg += "; the mixture used none of the good rows (see the sources' ratio / mix_size)"
    return msg


def prepare_training_data(data_cfg: DataConfig, model: ModelConfig, tokenizer_path: str,
                          out: Path, *, seed: int):
    """The trainee's tokenizer and the validated, tokenised training data of a run in `out`;
    bad rows go to <out>/quarantine.jsonl when data.on_bad_row=quarantine."""
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = load_tokenizer(tokenizer_path, model.revision, model.chat_template,
                               key="model.tokenizer" if model.tokenizer else "model.name_or_path")
    (out / "quarantine.jsonl").unlink(missing_ok=True)  # the sink appends; a rerun starts clean
    with BadRowSink(data_cfg.on_bad_row, out / "quarantine.jsonl") as sink:
        data = load_training_data(data_cfg, tokenizer, sink, seed=seed)
    return tokenizer, data
