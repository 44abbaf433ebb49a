"""One self-contained HTML page of STAR trajectories: each response coloured chunk by chunk.

Chunk k of a response is `response[cuts[k-1]:cuts[k]]` (the text prefix k adds); its colour
is the combined P(safe) of prefix k on a continuous red (unsafe) - amber - green (safe) scale.
Hovering a chunk shows P(safe) (and per-guardrail values when the record has them). No
external assets, no JavaScript: the "show values" switch is a CSS checkbox.

    python -m stardss.star.heatmap runs/x/score/star.jsonl star.html [--limit N] [--worst-first]
"""
from __future__ import annotations

import argparse
import html
import json
import math
from typing import Any, Iterable, Optional, Sequence

# (P(safe), RGB) stops of the colour scale; light tones so dark text stays readable.
_STOPS = [(0.0, (239, 83, 80)), (0.5, (255, 213, 79)), (1.0, (129, 199, 132))]
_NAN_COLOUR = "#d0d0d0"


def colour(p: float) -> str:
    """Background colour of P(safe) p (clipped to [0, 1]); grey for NaN / missing."""
    if p is None or not math.isfinite(p):
        return _NAN_COLOUR
    p = min(1.0, max(0.0, float(p)))
    for (p0, c0), (p1, c1) in zip(_STOPS, _STOPS[1:]):
        if p <= p1:
            t = (p - p0) / (p1 - p0)
            return "#%02x%02x%02x" % tuple(round(a + (b - a) * t) for a, b in zip(c0, c1))
    return "#%02x%02x%02x" % _STOPS[-1][1]


def _field(rec: Any, name: str, default=None):
    if isinstance(rec, dict):
        return rec.get(name, default)
    return getattr(rec, name, default)


def _fmt(p) -> str:
    return "n/a" if p is None or not math.isfinite(p) else f"{p:.3f}"


def _check(rec_id: str, response: str, cuts: Sequence[int], traj: Sequence[float]) -> None:
    if not cuts or len(cuts) != len(traj):
        raise ValueError(f"record {rec_id!r}: {len(cuts)} cuts but {len(traj)} trajectory values")
    if cuts[-1] != len(response) or cuts[0] < 0 or any(a > b for a, b in zip(cuts, cuts[1:])):
        raise ValueError(f"record {rec_id!r}: cuts {list(cuts)} do not partition a response of "
                         f"{len(response)} characters")


def _n(k: int, noun: str) -> str:
    return f"{k} {noun}" + ("" if k == 1 else "s")


def _min(traj: Sequence[float]) -> float:
    vals = [float(v) for v in traj if v is not None and math.isfinite(v)]
    return min(vals) if vals else math.nan


_CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"Noto Sans","Noto Sans CJK SC",
 sans-serif;margin:0;
 background:#f4f5f7;color:#1d1f23}
header{background:#fff;border-bottom:1px solid #dde0e4;padding:14px 24px;position:sticky;top:0;
 z-index:1}
h1{font-size:18px;margin:0 0 6px}
.summary{color:#444;margin:0 0 8px}
.legend{display:flex;align-items:center;gap:10px;flex-wrap:wrap;font-size:12px;color:#444}
.bar{width:240px;height:12px;border-radius:3px;border:1px solid #bbb;
 background:linear-gradient(to right,%(grad)s)}
.toggle{margin-left:18px;user-select:none;cursor:pointer;color:#1d1f23}
.toggle::before{content:"\\2610  "}
#vals:checked ~ header .toggle::before{content:"\\2611  "}
main{padding:16px 24px;max-width:1100px}
.rec{background:#fff;border:1px solid #dde0e4;border-radius:6px;margin:0 0 16px;padding:12px 16px}
.rec h2{font-size:14px;margin:0 0 8px;display:flex;gap:14px;align-items:baseline;flex-wrap:wrap}
.rec h2 .id{font-family:ui-monospace,Menlo,Consolas,monospace}
.stat{font-weight:normal;font-size:12px;color:#555}
.pill{display:inline-block;padding:0 6px;border-radius:8px;border:1px solid rgba(0,0,0,.15)}
.label{font-size:11px;text-transform:uppercase;letter-spacing:.04em;color:#777;margin:6px 0 2px}
.prompt{white-space:pre-wrap;background:#f7f8fa;border-left:3px solid #c5cad1;padding:6px 10px;
 max-height:10em;overflow:auto;font-size:13px}
.resp{white-space:pre-wrap;word-wrap:break-word;line-height:1.9;padding:4px 0}
.c{border-radius:2px;padding:1px 0;box-shadow:inset -1px 0 0 rgba(255,255,255,.95);
 box-decoration-break:clone;-webkit-box-decoration-break:clone}
.c:hover{outline:1px solid #333}
#vals:checked ~ main .c::after{content:attr(data-p);font-size:9px;vertical-align:super;
 color:#333;margin-left:1px;font-family:ui-monospace,Menlo,Consolas,monospace}
.empty{color:#888;font-style:italic}
"""


def render_heatmap(records: Iterable[Any], title: str = "STAR trajectories",
                   limit: Optional[int] = None, worst_first: bool = False,
                   guard_names: Optional[Sequence[str]] = None, show_values: bool = True) -> str:
    """The page as a string (see write_heatmap)."""
    recs = list(records)
    for r in recs:
        _check(str(_field(r, "id")), _field(r, "response") or "", list(_field(r, "cuts") or []),
               list(_field(r, "trajectory") or []))
    n_chunks = sum(len(_field(r, "trajectory")) for r in recs)
    n_low = sum(1 for r in recs for v in _field(r, "trajectory")
                if v is not None and math.isfinite(v) and v < 0.5)
    n_resp_low = sum(1 for r in recs if _min(_field(r, "trajectory")) < 0.5)
    shown = list(recs)
    if worst_first:
        shown.sort(key=lambda r: (math.inf if math.isnan(m := _min(_field(r, "trajectory")))
                                  else m))
    if limit is not None:
        shown = shown[:max(0, limit)]

    esc = html.escape
    grad = ",".join(f"{colour(p)} {p * 100:.0f}%" for p in (0.0, 0.25, 0.5, 0.75, 1.0))
    out = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
           '<meta name="viewport" content="width=device-width, initial-scale=1">',
           f"<title>{esc(title)}</title>", f"<style>{_CSS % {'grad': grad}}</style>",
           "</head><body>"]
    share = n_low / n_chunks if n_chunks else 0.0
    summary = (f"{_n(len(recs), 'response')}, {_n(n_chunks, 'chunk')}; {share:.1%} of chunks "
               f"below P(safe) 0.5; {_n(n_resp_low, 'response')} with a chunk below 0.5")
    if len(shown) != len(recs):
        summary += f". Showing {len(shown)}" + (" (lowest minimum P(safe) first)"
                                                if worst_first else "")
    elif worst_first:
        summary += ". Lowest minimum P(safe) first"
    out.append(f'<input type="checkbox" id="vals" hidden{" checked" if show_values else ""}>')
    out.append(f"<header><h1>{esc(title)}</h1><p class=\"summary\">{esc(summary)}.</p>"
               '<div class="legend"><span>unsafe 0.0</span><span class="bar"></span>'
               "<span>1.0 safe</span><span>colour = combined P(safe) of the prefix that ends "
               "with the chunk; hover a chunk for its value</span>"
               '<label class="toggle" for="vals">show values</label></div></header>')
    out.append("<main>")
    for r in shown:
        out.append(_render_record(r, guard_names))
    out.append("</main></body></html>")
    return "\n".join(out)


def _render_record(r: Any, guard_names: Optional[Sequence[str]]) -> str:
    esc = html.escape
    rid, prompt = str(_field(r, "id")), _field(r, "prompt") or ""
    response, cuts = _field(r, "response") or "", list(_field(r, "cuts"))
    traj = [float(v) if v is not None else math.nan for v in _field(r, "trajectory")]
    scores = _field(r, "scores")
    scores = [list(s) for s in scores] if scores is not None and len(scores) else None
    if scores is not None and any(len(s) != len(cuts) for s in scores):
        scores = None  # per-guardrail values are extra; skip them rather than mislabel
    lo, final = _min(traj), traj[-1]
    parts = [f'<section class="rec" id="r-{esc(rid, quote=True)}"><h2>'
             f'<span class="id">{esc(rid)}</span>'
             f'<span class="stat">min P(safe) <span class="pill" style="background:{colour(lo)}">'
             f'{_fmt(lo)}</span></span>'
             f'<span class="stat">full response <span class="pill" '
             f'style="background:{colour(final)}">{_fmt(final)}</span></span>'
             f'<span class="stat">{_n(len(cuts), "chunk")}</span></h2>',
             '<div class="label">prompt</div>', f'<div class="prompt">{esc(prompt)}</div>',
             '<div class="label">response</div><div class="resp">']
    start = 0
    for k, (end, p) in enumerate(zip(cuts, traj)):
        tip = f"chunk {k + 1}/{len(cuts)}  P(safe) {_fmt(p)}"
        if scores is not None and len(scores) > 1:
            names = list(guard_names) if guard_names and len(guard_names) == len(scores) else [
                f"guard {g}" for g in range(len(scores))]
            tip += "".join(f"\n{n}: {_fmt(float(s[k]))}" for n, s in zip(names, scores))
        parts.append(f'<span class="c" style="background:{colour(p)}" '
                     f'title="{esc(tip, quote=True)}" data-p="{_fmt(p)}">'
                     f"{esc(response[start:end])}</span>")
        start = end
    if not response:
        parts.append('<span class="empty">(empty response)</span>')
    parts.append("</div></section>")
    return "".join(parts)


def write_heatmap(records: Iterable[Any], path: str, title: str = "STAR trajectories",
                  limit: Optional[int] = None, worst_first: bool = False,
                  guard_names: Optional[Sequence[str]] = None, show_values: bool = True) -> None:
    """Write the heatmap page of `records` (StarRecord objects or dicts with id, prompt,
    response, cuts, trajectory and optionally scores) to `path`.

    limit: show at most this many responses (after sorting); the summary line counts all.
    worst_first: responses with the lowest minimum P(safe) first (else input order).
    guard_names: labels of the rows of `scores` in the tooltips.
    show_values: P(safe) superscripts initially on (a checkbox on the page toggles them).
    Raises ValueError when a record's cuts do not partition its response.
    """
    page = render_heatmap(records, title, limit, worst_first, guard_names, show_values)
    with open(path, "w", encoding="utf-8") as f:
        f.write(page)


def read_star_jsonl(path: str) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def main(argv: Optional[Sequence[str]] = None) -> None:
    ap = argparse.ArgumentParser(description="STAR heatmap of a star.jsonl file")
    ap.add_argument("star_jsonl")
    ap.add_argument("out_html")
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--worst-first", action="store_true")
    ap.add_argument("--title", default="STAR trajectories")
    a = ap.parse_args(argv)
    write_heatmap(read_star_jsonl(a.star_jsonl), a.out_html, a.title, a.limit, a.worst_first)


if __name__ == "__main__":
    main()
