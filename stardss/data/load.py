"""From configured sources to validated rows (and a mixture of them), with bad rows routed
to the sink so every record read is accounted for: good + bad == rows in the source."""
from __future__ import annotations

from ..config.schema import DataConfig, SourceConfig
from .mixture import mix
from .quarantine import BadRowSink
from .rows import BadRow, ChatRow, parse_row
from .sources import read_source, source_name


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
