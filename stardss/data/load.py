"""From configured sources to validated rows (and a mixture of them), with bad rows routed
to the sink so every record read is accounted for: good + bad == rows in the source; and the
training data of a run: the mixture rendered and tokenised for the trainee.

    JSONL / Parquet / Hub record -> ChatRow (rows.py) -> EncodedRow (format.py)

A run's data goes through shards (prepare_training_data -> ShardedData: ingested in Ray
tasks, rows on disk); load_training_data is the same in one process with the rows in memory
(tests, and the reference the sharded path is checked against).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from ..config.schema import DataConfig, ModelConfig, SourceConfig
from . import shards
from .format import EncodedRow, encode_row
from .ingest import TokenizerRef, ingest
from .mixture import mix
from .quarantine import BadRowSink
from .rows import BadRow, ChatRow, parse_row
from .shards import RowsView, ShardSet
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


def _sources(data_cfg: DataConfig) -> tuple[list[SourceConfig], list[bool]]:
    """The sources, and which give a ratio (all or none may)."""
    sources = list(data_cfg.sources)
    if not sources:
        raise ValueError("data.sources: no data sources configured")
    given = [s.ratio is not None for s in sources]
    if any(given) and not all(given):
        raise ValueError("data.sources: give every source a ratio or none")
    return sources, given


def load_mixture(data_cfg: DataConfig, sink: BadRowSink, *,
                 seed: int) -> tuple[list[ChatRow], dict]:
    """The training mixture and a summary {name: {"read", "bad", "available", "used",
    "repeated", "unused"}, ..., "total": rows in the mixture}."""
    sources, given = _sources(data_cfg)
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

    def turn_counts(self) -> Optional[np.ndarray]:
        """Assistant turns of each row (int32) when the rows train every turn
        (data.train_turns=all), else None."""
        if not self.encoded or self.encoded[0].token_turn is None:
            return None
        return np.asarray([e.n_turns for e in self.encoded], np.int32)


def load_training_data(data_cfg: DataConfig, tokenizer, sink: BadRowSink, *,
                       seed: int) -> TrainingData:
    """Mixture rows that parse and fit data.max_length; the rest go to the sink (error or
    quarantine)."""
    rows, summary = load_mixture(data_cfg, sink, seed=seed)
    kept, encoded = [], []
    for row in rows:
        try:
            encoded.append(encode_row(tokenizer, row, data_cfg.max_length, data_cfg.train_turns))
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


@dataclass
class ShardedData:
    """The training data of a run as the driver holds it: the shard set and, per mixture row,
    its global row in the set (`positions`, int64: mixture order, a repeated row repeats). The
    rows themselves stay in the memory-mapped shards; `rows` / `encoded` read them on access
    (the same items, in the same order, as TrainingData's lists)."""

    shards: ShardSet
    positions: np.ndarray
    summary: dict = field(default_factory=dict)

    @property
    def encoded(self) -> RowsView:
        return RowsView(self.shards, self.positions, "encoded")

    @property
    def rows(self) -> RowsView:
        return RowsView(self.shards, self.positions, "chat")

    def turn_counts(self) -> Optional[np.ndarray]:
        """TrainingData.turn_counts, from the shard set's per-row column."""
        counts = self.shards.turn_counts()
        return None if counts is None else counts[self.positions]


def _mixture_rows(data_cfg: DataConfig, ingested: list, sink: BadRowSink, *,
                  seed: int) -> tuple[ShardSet, np.ndarray, dict]:
    """load_mixture on the ingested sources: the same checks, bad rows to the sink in the
    same order (each source's unparsable rows, source by source; then rows that do not
    encode, in mixture order), the same seeded mixture, as global rows of the shard set."""
    shard_set = ShardSet([res.folder for res in ingested])
    sizes = [shards.read_manifest(r.folder)["rows"] for r in ingested]
    firsts = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    encode_bad: list[BadRow] = []
    slots_by_source: dict[str, list[int]] = {}
    summary: dict = {}
    index = shard_set.column("index") if len(shard_set) else np.zeros(0, np.int64)
    for k, res in enumerate(ingested):
        bad_parse = [b for b in res.bad if b["stage"] == "parse"]
        bad_enc = [shards.bad_from_record(res.name, b) for b in res.bad if b["stage"] == "encode"]
        # A parse-good row is a slot of the mixture: its global row, or -(1 + j) for the
        # j-th row that failed to encode (it reaches the sink only if the mixture uses it).
        good = np.arange(firsts[k], firsts[k + 1], dtype=np.int64)
        enc_at = np.asarray([b.row for b in bad_enc], dtype=np.int64)
        order = np.argsort(np.concatenate([index[good], enc_at]), kind="stable")
        slots = np.concatenate([good, -1 - (len(encode_bad) + np.arange(len(bad_enc)))])
        slots_by_source[res.name] = slots[order].tolist()
        encode_bad += bad_enc
        summary[res.name] = {"read": len(slots), "bad": len(bad_parse)}
    ratios = ({source_name(s): s.ratio for s in data_cfg.sources}
              if all(s.ratio is not None for s in data_cfg.sources) else None)
    mixture, mix_summary = mix(slots_by_source, ratios, data_cfg.mix_size, seed,
                               data_cfg.shuffle)
    summary = {name: {**summary[name], **mix_summary[name]} for name in summary}
    summary["total"] = mix_summary["total"]
    slots = np.asarray(mixture, dtype=np.int64)
    for j in slots[slots < 0]:  # in mixture order, like load_training_data's encode loop
        sink.handle(encode_bad[-1 - int(j)])
    return shard_set, slots[slots >= 0], summary


def load_sharded_data(data_cfg: DataConfig, tokenizer, tok_ref: TokenizerRef, root: Path,
                      sink: BadRowSink, *, seed: int, parallel: Optional[bool] = None,
                      target_bytes: Optional[int] = None,
                      start_ray: Optional[Callable[[], None]] = None) -> ShardedData:
    """load_training_data through shards under `root` (ingest.py): the same rows, summary and
    bad rows, tokenised in Ray tasks (or reused), the rows left on disk."""
    from .tokenizer import tokenizer_fingerprint

    sources, _ = _sources(data_cfg)
    _check_names(sources)
    ingested = ingest(sources, tok_ref, tokenizer_fingerprint(tokenizer), data_cfg.max_length,
                      root, seed=seed, stop_at_bad=data_cfg.on_bad_row == "error",
                      parallel=parallel, target_bytes=target_bytes, start_ray=start_ray,
                      train_turns=data_cfg.train_turns)
    for res in ingested:  # source order: its unparsable rows, then what stopped it
        for rec in res.bad:
            if rec["stage"] == "parse":
                sink.handle(shards.bad_from_record(res.name, rec))
        if res.error is not None:
            raise res.error
    shard_set, positions, summary = _mixture_rows(data_cfg, ingested, sink, seed=seed)
    summary["bad_rows"] = sink.counts
    summary["rows_encoded"] = len(positions)
    summary["shards"] = {"dir": str(root), "reused": sum(r.reused for r in ingested),
                         "sources": len(ingested)}
    if not len(positions):
        raise SourceError(no_usable_rows(data_cfg, summary, sink))
    return ShardedData(shard_set, positions, summary)


def prepare_training_data(data_cfg: DataConfig, model: ModelConfig, tokenizer_path: str,
                          out: Path, *, seed: int, shard_root: Optional[Path] = None,
                          parallel: Optional[bool] = None,
                          start_ray: Optional[Callable[[], None]] = None,
                          target_bytes: Optional[int] = None):
    """The trainee's tokenizer and the validated, tokenised training data of a run in `out`
    (ShardedData; its shards under `shard_root`, default <out>/shards); bad rows go to
    <out>/quarantine.jsonl when data.on_bad_row=quarantine. `parallel`, `start_ray`,
    `target_bytes`: ingest.ingest's."""
    out.mkdir(parents=True, exist_ok=True)
    key = "model.tokenizer" if model.tokenizer else "model.name_or_path"
    tokenizer = load_tokenizer(tokenizer_path, model.revision, model.chat_template, key=key)
    ref = TokenizerRef(tokenizer_path, model.revision, model.chat_template, key)
    (out / "quarantine.jsonl").unlink(missing_ok=True)  # the sink appends; a rerun starts clean
    with BadRowSink(data_cfg.on_bad_row, out / "quarantine.jsonl") as sink:
        data = load_sharded_data(data_cfg, tokenizer, ref, shard_root or out / "shards", sink,
                                 seed=seed, parallel=parallel, start_ray=start_ray,
                                 target_bytes=target_bytes)
    return tokenizer, data
