"""Read, validate, render and tokenise the sources of a run in parallel Ray tasks, one per
piece of each input file (byte ranges of a JSONL file cut after a newline, runs of row
groups of a Parquet file; a Hub / saved dataset or a toy split is one piece), each writing its
rows as one part of the source's shard folder (shards.py).

Plain Ray tasks, not Ray Data's readers + `map_batches`: a task knows the file's row number
of its first row (jsonl_ranges counts the lines before each cut), so a bad row is reported as
`<file>: row N` exactly as the sequential reader did, and the task's output is one part file
in row order, which makes the shard folder content-addressed and reusable as it is; Ray Data
would renumber rows per block and write its own files.

A source whose key (the input's content digest, its shaping, the tokenizer, chat template,
max_length and, when it is `all`, data.train_turns) has a finished folder is not read again.
With one piece in all and Ray not running, the piece runs in this process (small data: no Ray
start before the first bad row is reported; what the malformed-input corpus relies on).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

from ..config.schema import SourceConfig
from . import shards
from .format import encode_row
from .rows import BadRow, parse_row
from .sources import jsonl_ranges, parquet_ranges, read_piece, resolve_kind, source_name

TASK_BYTES = 32 << 20
"""Input bytes of a JSONL piece (about 50k chat rows): large enough that a task's start
(loading the tokenizer) is small beside its work."""
TASK_ROWS = 50_000
"""Rows of a Parquet piece (whole row groups)."""
TASK_TIMEOUT_S = 6 * 3600.0
"""How long the driver waits for the pieces of one ingestion (bounded, never forever)."""


@dataclass(frozen=True)
class TokenizerRef:
    """How a task loads the trainee's tokenizer (data.tokenizer.load_tokenizer's arguments)."""

    path: str
    revision: Optional[str] = None
    chat_template: Optional[str] = None
    key: str = "model.name_or_path"


@dataclass
class SourceShards:
    """One source after ingestion: its folder, or the first error that stops the run."""

    name: str
    folder: Optional[Path] = None
    error: Optional[BaseException] = None
    reused: bool = False
    bad: list = field(default_factory=list)
    """The source's bad-row records (shards.bad_record), parse ones in row order, then the
    encode ones in row order."""


_TOKENIZERS: dict = {}


def _tokenizer(ref):
    if not isinstance(ref, TokenizerRef):  # a loaded tokenizer (the in-process path)
        return ref
    if ref not in _TOKENIZERS:  # one load per worker process, reused by its later tasks
        from .tokenizer import load_tokenizer

        _TOKENIZERS[ref] = load_tokenizer(ref.path, ref.revision, ref.chat_template,
                                          key=ref.key)
    return _TOKENIZERS[ref]


def encode_piece(src: SourceConfig, piece: Any, seed: int, tok, max_length: int,
                 part: str, stop_at_bad: bool, train_turns: str = "last") -> dict:
    """Validate and tokenise one piece into the part file `part`. Returns {"rows": encoded,
    "parse_bad": [...], "encode_bad": [...], "error": exception or None}; `stop_at_bad`
    (data.on_bad_row=error): stop at the first row that does not parse (it stops the run);
    `train_turns`: data.train_turns (format.encode_row)."""
    name = source_name(src)
    out = {"rows": 0, "parse_bad": [], "encode_bad": [], "error": None}
    writer = shards.PartWriter(Path(part), turns=train_turns == "all")
    try:
        tokenizer = _tokenizer(tok)
        for index, raw in read_piece(src, piece, seed):
            try:
                if isinstance(raw, BadRow):
                    raise raw
                row = parse_row(raw, name, index)
            except BadRow as bad:
                out["parse_bad"].append(shards.bad_record(bad, "parse"))
                if stop_at_bad:
                    break
                continue
            try:
                writer.add(row, encode_row(tokenizer, row, max_length, train_turns))
            except BadRow as bad:  # a mixture may not use it: the driver decides
                out["encode_bad"].append(shards.bad_record(bad, "encode"))
    except Exception as err:  # returned, not raised: the driver raises it as it is (one line)
        out["error"] = err
    finally:
        out["rows"] = writer.close()
    return out


def _pieces(src: SourceConfig, target_bytes: int) -> list:
    kind = resolve_kind(src)
    if kind == "jsonl":
        return jsonl_ranges(src, target_bytes)
    if kind == "parquet":
        return parquet_ranges(src, max(1, target_bytes // 640))  # ~640 bytes a chat row
    return [None]


def _key(src: SourceConfig, seed: int, tokenizer_fp: str, max_length: int,
         train_turns: str = "last") -> str:
    from dataclasses import asdict

    kind = resolve_kind(src)
    shaping = {k: v for k, v in asdict(src).items() if k != "ratio"}
    fields = {"source": shaping, "kind": kind, "tokenizer": tokenizer_fp,
              "max_length": max_length, "content": shards.content_digest(src.path),
              "seed": seed if kind == "toy" else None}
    if train_turns != "last":  # only then: the folders of last-turn runs keep their keys
        fields["train_turns"] = train_turns
    return shards.source_key(fields)


def ingest(sources: list[SourceConfig], tok, tokenizer_fp: str, max_length: int, root: Path, *,
           seed: int, stop_at_bad: bool, parallel: Optional[bool] = None,
           target_bytes: Optional[int] = None, task_cpus: float = 1.0,
           start_ray: Optional[Callable[[], None]] = None,
           train_turns: str = "last") -> list[SourceShards]:
    """Every source as a shard folder under `root`, in config order; a source that fails
    carries its error instead (the caller raises the first). `tok`: a TokenizerRef (tasks
    load it) or a tokenizer (in-process only). `parallel`: None = Ray tasks when Ray is up or
    there is more than one piece to do (after `start_ray()`, when Ray is not up), else in
    this process. `target_bytes`: input bytes per piece (None: TASK_BYTES). `train_turns`:
    data.train_turns (what the rows train; part of each folder's key)."""
    target_bytes = target_bytes or TASK_BYTES
    root.mkdir(parents=True, exist_ok=True)
    results: list[SourceShards] = []
    todo = []  # (source position, src, key, tmp folder, pieces)
    for i, src in enumerate(sources):
        name = source_name(src)
        try:
            pieces = _pieces(src, target_bytes)  # first: a missing file is named here
            key = _key(src, seed, tokenizer_fp, max_length, train_turns)
            folder = root / key
            if shards.read_manifest(folder) is not None:
                results.append(SourceShards(name, folder, reused=True,
                                            bad=shards.read_bad(folder)))
                continue
        except Exception as err:
            results.append(SourceShards(name, error=err))
            continue
        results.append(SourceShards(name, root / key))
        todo.append((i, src, key, shards.new_tmp(root, key), pieces))
    n_pieces = sum(len(t[4]) for t in todo)
    if parallel is None:
        import ray

        parallel = ray.is_initialized() or n_pieces > 1
        if parallel and not ray.is_initialized() and start_ray is not None:
            start_ray()
    outputs = _run(todo, tok, seed, max_length, stop_at_bad, parallel, task_cpus, train_turns)
    for (i, src, key, tmp, pieces), outs in zip(todo, outputs):
        res = results[i]
        err = next((o["error"] for o in outs if o["error"] is not None), None)
        parse_bad = [b for o in outs for b in o["parse_bad"]]
        encode_bad = [b for o in outs for b in o["encode_bad"]]
        res.bad = parse_bad + encode_bad
        first_err = next((j for j, o in enumerate(outs) if o["error"] is not None), None)
        first_bad = next((j for j, o in enumerate(outs) if o["parse_bad"]), None)
        if err is not None and (first_bad is None or first_err <= first_bad or not stop_at_bad):
            res.error = err
        if err is not None or (stop_at_bad and parse_bad):
            import shutil

            shutil.rmtree(tmp, ignore_errors=True)  # incomplete: never reused
            res.folder = None
            continue
        manifest = {"version": shards.VERSION, "key": key, "source": res.name,
                    "rows": sum(o["rows"] for o in outs),
                    "parts": [{"file": f"part-{j:05d}.arrow", "rows": o["rows"]}
                              for j, o in enumerate(outs)]}
        shards.commit(tmp, res.folder, manifest, res.bad)
    return results


def _run(todo, tok, seed, max_length, stop_at_bad, parallel, task_cpus,
         train_turns) -> list[list[dict]]:
    """Each piece's output, per source, in piece order."""
    jobs = [(src, piece, str(tmp / f"part-{j:05d}.arrow"))
            for _, src, _, tmp, pieces in todo for j, piece in enumerate(pieces)]
    if not parallel:
        outs = [encode_piece(src, piece, seed, tok, max_length, part, stop_at_bad, train_turns)
                for src, piece, part in jobs]
    else:
        import ray

        from ..raytools import get

        if not isinstance(tok, TokenizerRef):
            raise TypeError("ingestion in Ray tasks needs a TokenizerRef, not a tokenizer")
        task = ray.remote(num_cpus=task_cpus, max_retries=2)(encode_piece)
        refs = [task.remote(src, piece, seed, tok, max_length, part, stop_at_bad, train_turns)
                for src, piece, part in jobs]
        outs = get(refs, timeout_s=TASK_TIMEOUT_S,
                   what=f"data ingestion ({len(refs)} tasks)")
    grouped, k = [], 0
    for *_, pieces in todo:
        grouped.append(outs[k:k + len(pieces)])
        k += len(pieces)
    return grouped
