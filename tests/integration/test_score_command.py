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
