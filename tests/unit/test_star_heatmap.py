"""The STAR heatmap page: escaping, one span per chunk in order, colours, parseable HTML."""
import html
from html.parser import HTMLParser

import pytest

from stardss.star.chunk import word_cuts
from stardss.star.heatmap import colour, render_heatmap, write_heatmap
from stardss.star.score import StarRecord

VOID = {"meta", "input", "br", "hr", "img", "link"}


class Page(HTMLParser):
    """Collects each record's chunk spans (text, style, title) and checks tag nesting."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.stack, self.records, self.errors = [], {}, []
        self.scripts = 0
        self._chunk = None
        self._rec = None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "script":
            self.scripts += 1
        if tag not in VOID:
            self.stack.append(tag)
        if tag == "section":
            self._rec = attrs["id"][2:]
            self.records[self._rec] = []
        if tag == "span" and "c" in (attrs.get("class") or "").split():
            self._chunk = {"text": "", "style": attrs["style"], "title": attrs["title"],
                           "p": attrs["data-p"]}
            self.records[self._rec].append(self._chunk)

    def handle_endtag(self, tag):
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"unbalanced </{tag}> with open {self.stack[-3:]}")
            return
        self.stack.pop()
        if tag == "span":
            self._chunk = None

    def handle_data(self, data):
        if self._chunk is not None:
            self._chunk["text"] += data


def record(rid, prompt, response, traj=None, guards=2):
    cuts = word_cuts(response, 3)
    traj = traj if traj is not None else [1.0 - k / max(1, len(cuts)) for k in range(len(cuts))]
    scores = [list(traj)] * guards
    return StarRecord(rid, prompt, response, cuts, scores, list(traj))


RECORDS = [
    record("r0", "Say <hi> & \"bye\"", "Hello <script>alert('x')</script> & \"you\" ok"),
    record("r1", "東京?", "  東京 😀 naïve\n\n\tline two  with   spaces \n"),
    record("r2", "empty", ""),
    record("r3", "one", "single"),
]


def parse(page):
    parser = Page()
    parser.feed(page)
    parser.close()
    assert parser.errors == [] and parser.stack == []
    return parser


def test_chunks_partition_each_response_in_order(tmp_path):
    path = tmp_path / "heat.html"
    write_heatmap(RECORDS, str(path))
    page = parse(path.read_text(encoding="utf-8"))
    assert list(page.records) == ["r0", "r1", "r2", "r3"]
    for rec in RECORDS:
        spans = page.records[rec.id]
        assert len(spans) == len(rec.cuts)
        starts = [0] + rec.cuts[:-1]
        assert [s["text"] for s in spans] == [rec.response[a:b] for a, b in zip(starts, rec.cuts)]
        assert "".join(s["text"] for s in spans) == rec.response
        assert [float(s["p"]) for s in spans] == pytest.approx(rec.trajectory, abs=1e-3)
        assert all(f"P(safe) {v:.3f}" in s["title"] for s, v in zip(spans, rec.trajectory))
    assert sum(len(v) for v in page.records.values()) == sum(len(r.cuts) for r in RECORDS)


def test_everything_is_escaped():
    page = render_heatmap(RECORDS)
    parsed = parse(page)
    assert parsed.scripts == 0  # the response's <script> is text, not a tag
    assert "<script>" not in page and "&lt;script&gt;" in page
    assert "<hi>" not in page and html.escape('Say <hi> & "bye"') in page
    evil = record('x" onmouseover="alert(1)', "<p>", 'a"b\'c <i>d</i>')
    page = render_heatmap([evil], title="<b>t</b>")
    parsed = parse(page)
    assert "<b>t</b>" not in page and list(parsed.records) == ['x" onmouseover="alert(1)']
    assert "".join(s["text"] for s in parsed.records[evil.id]) == evil.response


def test_whitespace_is_preserved():
    page = render_heatmap([RECORDS[1]])
    assert "white-space:pre-wrap" in page
    assert "\n\n\tline two" in page


def test_colours():
    assert colour(0.0) != colour(1.0) != colour(0.5)
    assert colour(-1) == colour(0.0) and colour(2) == colour(1.0)
    assert colour(float("nan")) not in (colour(0.0), colour(1.0))
    reds = [int(colour(p)[1:3], 16) for p in (0.5, 0.75, 1.0)]
    greens = [int(colour(p)[3:5], 16) for p in (0.0, 0.25)]
    assert reds == sorted(reds, reverse=True) and greens == sorted(greens)
    page = parse(render_heatmap([record("a", "p", "w1 w2 w3 w4", [0.0, 1.0])]))
    styles = [s["style"] for s in page.records["a"]]
    assert styles == [f"background:{colour(0.0)}", f"background:{colour(1.0)}"]


def test_dicts_sorting_limit_and_summary():
    dicts = [dict(id="safe", prompt="p", response="a b c", cuts=[5], trajectory=[0.9]),
             dict(id="bad", prompt="p", response="a b c d", cuts=[3, 7], trajectory=[0.8, 0.1]),
             dict(id="mid", prompt="p", response="x", cuts=[1], trajectory=[0.4])]
    page = render_heatmap(dicts, worst_first=True)
    assert list(parse(page).records) == ["bad", "mid", "safe"]
    assert "3 responses, 4 chunks; 50.0% of chunks below P(safe) 0.5" in page
    page = render_heatmap(dicts, worst_first=True, limit=1)
    assert list(parse(page).records) == ["bad"] and "Showing 1" in page
    assert list(parse(render_heatmap(dicts, limit=2)).records) == ["safe", "bad"]


def test_guard_names_in_tooltips():
    page = parse(render_heatmap([RECORDS[3]], guard_names=["lg3", "gg31"]))
    assert "lg3: 1.000" in page.records["r3"][0]["title"]
    assert "gg31: 1.000" in page.records["r3"][0]["title"]


def test_bad_cuts_are_rejected():
    with pytest.raises(ValueError):
        render_heatmap([dict(id="x", prompt="", response="abc", cuts=[2], trajectory=[0.5])])
    with pytest.raises(ValueError):
        render_heatmap([dict(id="x", prompt="", response="abc", cuts=[3], trajectory=[])])
