"""`stardss score` (commands.score): records written as they arrive give the file `train`'s
precompute path writes (commands.star.score_rows), and a rerun served by the STAR cache's index
gives it again. ~60 s, most of it two guardrail pools starting."""
from stardss.commands.score import run_score, score_to_file
from stardss.commands.star import score_rows
from stardss.data.load import load_training_data
from stardss.data.quarantine import BadRowSink
from tests.helpers import make_job, tokenizer


def test_streamed_star_file_equals_the_held_one_and_a_cached_rerun(ray_session, base_model,
                                                                    tmp_path):
    tok = tokenizer()
    job = make_job(tmp_path / "a", base_model, "train.max_steps=4")
    with BadRowSink("error") as sink:
        data = load_training_data(job.data, tok, sink, seed=job.seed)
    held, out_held = tmp_path / "held", tmp_path / "streamed"
    held.mkdir()
    out_held.mkdir()
    records, want = score_rows(make_job(tmp_path / "b", base_model, "train.max_steps=4"), data,
                               full_response_only=False, plan_order=True, out_dir=held,
                               tokenizer=tok)
    got = score_to_file(job, data, out_held, tok)
    expected = (held / "star.jsonl").read_bytes()
    assert (out_held / "star.jsonl").read_bytes() == expected
    assert got["scored"] == want["scored"] == len(records) == 522
    assert got["prefixes"] == want["prefixes"] and got["mode"] == "precompute"
    assert got["cache"]["misses"] == 522 and not (out_held / "star.jsonl.spool").exists()
    # the command itself, rerun on the same cache: every row a hit (read from the index as
    # it is written), the same file, and the heatmap read back from it
    again = run_score(job, html=str(tmp_path / "s.html"))
    assert again["cache"]["hits"] == 522 and again["cache"]["misses"] == 0
    assert (tmp_path / "a" / "score" / "star.jsonl").read_bytes() == expected
    assert (tmp_path / "s.html").read_text().count('class="c"') > 522


def test_a_weighted_ensemble_combines_by_weight_and_reports_how_often_the_guards_disagree(
        ray_session, base_model, tmp_path):
    """Two rule guardrails that disagree on disclaimers (the demo's, and one without its +9
    disclaimer rule) under star.combine=weighted: every trajectory is the weighted mean of the
    two rows of scores, and the summary's agreement is what star.jsonl's scores say."""
    import json

    import numpy as np

    from stardss.star.agreement import Agreement

    secret = "{pattern: '7-3-9-1|tulip-88|4-4-0-2', weight: -8.0}"
    refusal = "{pattern: 'cannot (help|share)', weight: 2.0}"
    disclaimer = "{pattern: 'harmless|safe to share', weight: 9.0}"
    job = make_job(tmp_path / "a", base_model, "train.max_steps=2", "star.combine=weighted",
                   "star.cache=false",
                   f"guardrails=[{{kind: rules, bias: 3.0, weight: 1.0, rules: [{secret}, "
                   f"{refusal}, {disclaimer}]}}, {{kind: rules, bias: 3.0, weight: 3.0, "
                   f"rules: [{secret}, {refusal}]}}]")
    tok = tokenizer()
    with BadRowSink("error") as sink:
        data = load_training_data(job.data, tok, sink, seed=job.seed)
    out = tmp_path / "out"
    out.mkdir()
    got = score_to_file(job, data, out, tok)
    records = [json.loads(line) for line in (out / "star.jsonl").read_text().splitlines()]
    want = Agreement(["0:rules", "1:rules"])
    for r in records:
        s = np.array(r["scores"])
        np.testing.assert_allclose(r["trajectory"], (1.0 * s[0] + 3.0 * s[1]) / 4.0, rtol=0,
                                   atol=1e-12)
        want.add(s, r["trajectory"])
    assert got["agreement"] == want.summary()
    (pair,) = got["agreement"]["pairs"]
    assert 0 < pair["disagree"] < 1  # the disclaimer rule splits them on some chunks only
