"""`stardss check`: every input of a run opened and tried as the run would, one line per check,
exit 0 only when a run would start. No Ray (the demo job has no ray.address): real files, the
real tiny model folder and tokenizer, the real toy world."""
import json
from pathlib import Path

from stardss.commands.check import run_check
from tests.helpers import make_job


def check(job, capsys, **kw) -> tuple[int, list[str]]:
    code = run_check(job, **kw)
    return code, capsys.readouterr().out.splitlines()


def write_jsonl(path: Path, lines: list[str]) -> str:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return str(path)


GOOD = [json.dumps({"prompt": "What is 2+2?", "response": "It is 4."}),
        json.dumps({"prompt": "Name a colour.", "response": "Blue."})]
MIXED = [GOOD[0], '{"prompt": "broken', json.dumps({"prompt": "no answer here"}), GOOD[1]]


def test_demo_job_would_start(tmp_path, base_model, capsys):
    code, lines = check(make_job(tmp_path, base_model), capsys)
    assert lines == [
        "ok    config: job 'demo' valid (loss.kind=dss)",
        f"ok    model.name_or_path: folder {base_model}",
        f"ok    model.name_or_path (tokenizer): folder {base_model}: loads, 700 tokens, with a "
        "chat template",
        "ok    data.sources[0] finetune: 100 rows read, 0 bad",
        "ok    guardrails[0] rules: 4 rules compile",
        "ok    eval.sets[0] harmful: 120 items (format rows)",
        "ok    eval.sets[1] overrefusal: 105 items (format rows)",
        "ok    eval.sets[2] tasks: 150 items (format rows)",
        "check: all 8 checks ok: a run would start",
    ]
    assert code == 0


def test_rows_bounds_the_rows_read(tmp_path, base_model, capsys):
    code, lines = check(make_job(tmp_path, base_model), capsys, rows=7)
    assert "ok    data.sources[0] finetune: 7 rows read, 0 bad" in lines
    assert code == 0


def _mixed_job(tmp_path, base_model, on_bad_row: str):
    """The job reading MIXED (good rows and bad ones) with data.on_bad_row=`on_bad_row`."""
    path = write_jsonl(tmp_path / "mixed.jsonl", MIXED)
    return make_job(tmp_path, base_model, f"data.sources=[{{path: {path}, name: mixed}}]",
                    f"data.on_bad_row={on_bad_row}")


def test_bad_rows_are_counted_by_reason_and_quarantined(tmp_path, base_model, capsys):
    code, lines = check(_mixed_job(tmp_path, base_model, "quarantine"), capsys)
    at = lines.index("ok    data.sources[0] mixed: 4 rows read, 2 bad (invalid_json 1, "
                     "missing_field 1); a run quarantines them")
    assert lines[at + 1:at + 3] == [
        "        row 1: invalid JSON: Unterminated string starting at (column 12)",
        "        row 2: missing field 'response'",
    ]
    assert lines[-1] == "check: all 8 checks ok: a run would start"
    assert code == 0


def test_bad_rows_stop_a_run_with_on_bad_row_error(tmp_path, base_model, capsys):
    code, lines = check(_mixed_job(tmp_path, base_model, "error"), capsys)
    assert ("FAIL  data.sources[0] mixed: 4 rows read, 2 bad (invalid_json 1, missing_field 1); "
            "data.on_bad_row=error stops the run at the first one (or set "
            "data.on_bad_row=quarantine)") in lines
    assert lines[-1] == "check: 1 of 8 checks failed: a run would not start"
    assert code == 2


def test_a_source_of_bad_rows_only_or_no_rows_fails(tmp_path, base_model, capsys):
    bad = write_jsonl(tmp_path / "bad.jsonl", MIXED[1:3])
    empty = write_jsonl(tmp_path / "empty.jsonl", [])
    job = make_job(tmp_path, base_model, "data.on_bad_row=quarantine",
                   f"data.sources=[{{path: {bad}, name: bad}}, {{path: {empty}, name: empty}}]")
    code, lines = check(job, capsys)
    assert ("FAIL  data.sources[0] bad: 2 rows read, 2 bad (invalid_json 1, missing_field 1); "
            "no usable rows") in lines
    assert f"FAIL  data.sources[1] empty: 0 rows read from {empty}" in lines
    assert code == 2


def test_too_long_rows_are_bad_as_in_training(tmp_path, base_model, capsys):
    path = write_jsonl(tmp_path / "good.jsonl", GOOD)
    job = make_job(tmp_path, base_model, f"data.sources=[{{path: {path}, name: good}}]",
                   "data.max_length=5", "data.on_bad_row=quarantine")
    code, lines = check(job, capsys)
    assert "FAIL  data.sources[0] good: 2 rows read, 2 bad (too_long 2); no usable rows" in lines
    assert code == 2


def test_a_missing_source_file_fails_naming_it(tmp_path, base_model, capsys):
    missing = tmp_path / "nowhere.jsonl"
    job = make_job(tmp_path, base_model, f"data.sources=[{{path: {missing}}}]")
    code, lines = check(job, capsys)
    assert (f"FAIL  data.sources[0] {missing}: data source '{missing}': no such file: "
            f"{missing}") in lines
    assert code == 2


def test_a_missing_model_folder_fails_naming_the_key(tmp_path, base_model, capsys):
    missing = tmp_path / "no-model"
    code, lines = check(make_job(tmp_path, str(missing)), capsys)
    assert f"FAIL  model.name_or_path: no such folder: {missing} (and not a Hub id)" in lines
    # Without a tokenizer the rows are still parsed, and the line says they were not tokenised.
    assert "ok    data.sources[0] finetune: 100 rows read, 0 bad; not tokenised (no tokenizer)" \
        in lines
    assert lines[-1] == "check: 1 of 7 checks failed: a run would not start"
    assert code == 2


def test_a_folder_that_is_not_a_model_fails(tmp_path, base_model, capsys):
    folder = tmp_path / "empty-folder"
    folder.mkdir()
    code, lines = check(make_job(tmp_path, base_model, f"model.tokenizer={folder}"), capsys)
    assert (f"FAIL  model.tokenizer (tokenizer): folder {folder} has no tokenizer_config.json "
            f"or tokenizer.json: not a Hugging Face model folder") in lines
    assert code == 2


def test_an_uncached_hub_id_offline_says_what_is_missing(tmp_path, base_model, capsys,
                                                         monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    job = make_job(tmp_path, "someone/no-such-model", f"model.tokenizer={base_model}")
    code, lines = check(job, capsys)
    assert ("FAIL  model.name_or_path: no such folder: someone/no-such-model, and Hub id "
            "someone/no-such-model is not in the local Hugging Face cache (config.json missing "
            f"under {tmp_path / 'hub'}); offline (HF_HUB_OFFLINE=1): download it where there is "
            "network (`huggingface-cli download someone/no-such-model`) or point "
            "model.name_or_path at a folder") in lines
    assert (f"ok    model.tokenizer (tokenizer): folder {base_model}: loads, 700 tokens, with a "
            "chat template") in lines
    assert code == 2


def test_a_cached_hub_id_resolves(tmp_path, base_model, capsys, monkeypatch):
    from huggingface_hub import constants

    # The hub cache's own layout: refs/main names the snapshot holding the files.
    repo = tmp_path / "hub" / "models--someone--tiny"
    snapshot = repo / "snapshots" / ("a" * 40)
    snapshot.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("a" * 40)
    (snapshot / "config.json").write_text((Path(base_model) / "config.json").read_text())
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    job = make_job(tmp_path, "someone/tiny", f"model.tokenizer={base_model}")
    code, lines = check(job, capsys)
    assert f"ok    model.name_or_path: Hub id someone/tiny in the local cache ({snapshot})" \
        in lines
    assert code == 0


def test_an_eval_set_with_a_missing_file_fails_naming_it(tmp_path, base_model, capsys):
    missing = tmp_path / "advbench.csv"
    job = make_job(tmp_path, base_model,
                   f"eval.sets=[{{name: harmful, path: {missing}, task: safety}}]")
    code, lines = check(job, capsys)
    assert [x for x in lines if x.startswith("FAIL")] == [
        f"FAIL  eval.sets[0] harmful: eval set 'harmful': no such file: {missing}"]
    assert lines[-1] == "check: 1 of 6 checks failed: a run would not start"
    assert code == 2


def test_no_eval_sets_is_a_note(tmp_path, base_model, capsys):
    code, lines = check(make_job(tmp_path, base_model, "eval.sets=[]",
                                 "eval.attacks=[]", "eval.during_training.sets=[]"), capsys)
    assert "note  eval.sets: none configured (eval is optional)" in lines
    assert lines[-1] == "check: all 5 checks ok: a run would start"
    assert code == 0


def test_dss_without_guardrails_fails(tmp_path, base_model, capsys):
    code, lines = check(make_job(tmp_path, base_model, "guardrails=[]"), capsys)
    assert ("FAIL  guardrails: `stardss train` loss.kind=dss needs STAR: name at least one "
            "guardrail") in lines
    assert code == 2


def test_sft_without_guardrails_would_start(tmp_path, base_model, capsys):
    code, lines = check(make_job(tmp_path, base_model, "guardrails=[]", "loss.kind=sft"), capsys)
    assert not [x for x in lines if x.startswith("FAIL")]
    assert code == 0


def test_a_model_guardrail_resolves_its_weights_like_the_model(tmp_path, base_model, capsys):
    missing = tmp_path / "no-guard"
    job = make_job(tmp_path, base_model,
                   f"guardrails=[{{kind: hf_classifier, name_or_path: {missing}}}]")
    code, lines = check(job, capsys)
    assert (f"FAIL  guardrails[0] hf_classifier name_or_path: no such folder: {missing} (and "
            f"not a Hub id)") in lines
    assert code == 2


def test_a_remote_guardrail_is_checked_against_its_server(tmp_path, base_model, capsys):
    """The tokenizer resolves here, the format renders with it, and the server is asked which
    models it serves: ok naming the format when it serves `model`, one FAIL line when it does
    not or nothing listens."""
    from tests.http_support import CompletionServer, build_served_guard, closed_port_url

    folder = build_served_guard("llama_guard", tmp_path / "guard")

    def job_for(url, model="guard-model"):
        return make_job(tmp_path, base_model,
                        f"guardrails=[{{kind: remote, family: llama_guard, name_or_path: "
                        f"{folder}, server: {{base_url: '{url}', model: {model}, "
                        f"max_retries: 0, timeout_s: 5}}}}]")

    with CompletionServer(folder) as srv:
        code, lines = check(job_for(srv.url), capsys)
        assert code == 0, lines
        (line,) = [ln for ln in lines if ln.startswith("ok    guardrails[0] remote:")]
        assert f"{srv.url} serves guard-model; format llama_guard" in line
        assert not [s for s in srv.seen if s.path.endswith("/completions")]  # nothing scored
        code, lines = check(job_for(srv.url, "other-model"), capsys)
        assert code == 2 and any(ln.startswith("FAIL  guardrails[0] remote:") and
                                 "other-model" in ln for ln in lines), lines
    code, lines = check(job_for(closed_port_url()), capsys)
    assert code == 2 and any("FAIL  guardrails[0] remote:" in ln and "refused" in ln
                             for ln in lines), lines
