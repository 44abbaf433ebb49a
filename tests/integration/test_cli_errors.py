"""Bad input to the console script: exit 2 and exactly one "stardss: <kind> error: ..." line on
stderr, never a Python traceback (unless --debug / STARDSS_DEBUG=1 asks for one).

Every case fails before Ray starts (config, model path, data are all checked first), so each
is one short `stardss` process."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

STARDSS = str(Path(sys.executable).with_name("stardss"))
GOOD_ROW = {"prompt": "What is two plus two?", "response": "Four."}


def _run(*args, env=None):
    base = {k: v for k, v in os.environ.items() if k != "STARDSS_DEBUG"}
    env = {**base, "RAY_DEDUP_LOGS": "0", **(env or {})}
    return subprocess.run([STARDSS, *args], capture_output=True, text=True, env=env,
                          timeout=300)


def _one_error(proc) -> str:
    """The single "stardss:" line of a failed run (exit 2, no traceback)."""
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    lines = [x for x in proc.stderr.splitlines() if x.startswith("stardss:")]
    assert len(lines) == 1, proc.stderr[-3000:]
    return lines[0]


def _train(tmp_path, model, *overrides, env=None):
    return _run("train", "jobs/demo.yaml", f"out_dir={tmp_path / 'out'}",
                f"model.name_or_path={model}", "loss.kind=sft", *overrides, env=env)


def _jsonl_source(path: Path) -> str:
    return f"data.sources=[{{path: {path}, kind: jsonl}}]"


@pytest.mark.parametrize("override, line", [
    ("train.lrr=1", "stardss: config error: train.lrr: no such key"),
    ("train.lr=nan", "stardss: config error: train.lr: must be a finite number, got nan"),
    ("loss.kl.coef=inf", "stardss: config error: loss.kl.coef: must be a finite number, got inf"),
    ("data.sources=[]",
     "stardss: config error: data.sources: `stardss train` needs at least one data source"),
])
def test_bad_overrides(tmp_path, override, line):
    assert _one_error(_train(tmp_path, "unused", override)) == line


@pytest.mark.parametrize("second_line, reason", [
    (b'{"prompt": "cut off\n', "invalid JSON: Unterminated string starting at (column 12)"),
    (b'{"prompt": "caf\xe9"}\n', "not valid UTF-8 (byte 0xe9 at offset 15)"),
], ids=["malformed_json", "invalid_utf8"])
def test_a_bad_line_with_on_bad_row_error_names_file_and_row(tmp_path, base_model,
                                                             second_line, reason):
    data = tmp_path / "d.jsonl"
    data.write_bytes(json.dumps(GOOD_ROW).encode() + b"\n" + second_line)
    line = _one_error(_train(tmp_path, base_model, _jsonl_source(data),
                             "data.on_bad_row=error"))
    assert line == f"stardss: data error: {data}: row 1: {reason}"


def test_only_row_bad_with_quarantine_names_counts_and_file(tmp_path, base_model):
    data = tmp_path / "q.jsonl"
    data.write_text(json.dumps({"prompt": "no answer here"}) + "\n")
    line = _one_error(_train(tmp_path, base_model, _jsonl_source(data),
                             "data.on_bad_row=quarantine"))
    quarantine = tmp_path / "out" / "sft" / "quarantine.jsonl"
    assert line == (f"stardss: data error: no usable training rows: 1 row read ({data}: 1 read, "
                    f"1 bad), 1 bad by reason: missing_field 1; the bad rows are in "
                    f"{quarantine}")
    (record,) = [json.loads(x) for x in quarantine.read_text().splitlines()]
    assert record["row"] == 0 and record["reason"] == "missing field 'response'"


def test_empty_file(tmp_path, base_model):
    data = tmp_path / "empty.jsonl"
    data.write_text("")
    line = _one_error(_train(tmp_path, base_model, _jsonl_source(data)))
    assert line == f"stardss: data error: no usable training rows: 0 rows read from {data}"


def test_missing_data_file(tmp_path, base_model):
    data = tmp_path / "absent.jsonl"
    line = _one_error(_train(tmp_path, base_model, _jsonl_source(data)))
    assert line == f"stardss: file error: data source '{data}': no such file: {data}"


def test_missing_model_folder(tmp_path):
    missing = tmp_path / "no" / "model"
    line = _one_error(_train(tmp_path, missing))
    assert line == (f"stardss: model error: model.name_or_path: no such folder: {missing} "
                    f"(and not a Hub id)")


def test_hub_id_not_in_the_offline_cache(tmp_path):
    env = {"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    line = _one_error(_train(tmp_path, "someone/some-model", env=env))
    assert line == ("stardss: model error: model.name_or_path: no such folder: "
                    "someone/some-model, and Hub id someone/some-model is not in the local "
                    f"Hugging Face cache (config.json missing under {tmp_path / 'hf' / 'hub'}); "
                    "offline (HF_HUB_OFFLINE=1): download it where there is network "
                    "(`huggingface-cli download someone/some-model`) or point "
                    "model.name_or_path at a folder")


def test_missing_tokenizer_folder(tmp_path, base_model):
    missing = tmp_path / "tok"
    line = _one_error(_train(tmp_path, base_model, f"model.tokenizer={missing}"))
    assert line == (f"stardss: model error: model.tokenizer: no such folder: {missing} "
                    f"(and not a Hub id)")


def test_missing_eval_model(tmp_path):
    missing = tmp_path / "m"
    proc = _run("eval", "jobs/demo.yaml", f"out_dir={tmp_path}", "--model", f"dss={missing}")
    assert _one_error(proc) == (f"stardss: model error: --model dss: no such folder: "
                                f"{missing} (and not a Hub id)")


@pytest.mark.parametrize("how", ["--debug first", "--debug last", "STARDSS_DEBUG=1"])
def test_debug_shows_the_traceback(tmp_path, how):
    args = ["train", "jobs/demo.yaml", f"out_dir={tmp_path}", "train.lrr=1"]
    env = None
    if how == "--debug first":
        args = ["--debug", *args]
    elif how == "--debug last":
        args = [*args, "--debug"]
    else:
        env = {"STARDSS_DEBUG": "1"}
    proc = _run(*args, env=env)
    assert proc.returncode == 2
    assert proc.stderr.startswith("Traceback (most recent call last):")
    last = proc.stderr.rstrip().splitlines()[-1]
    assert last == "stardss.config.fields.ConfigError: train.lrr: no such key"


def test_check_subcommand_is_wired(tmp_path):
    """`stardss check` (stardss/commands/check.py) gets the job and --rows; a run that would
    not start is exit 2."""
    proc = _run("check", "jobs/demo.yaml", f"out_dir={tmp_path}",
                f"model.name_or_path={tmp_path / 'none'}", "--rows", "5")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert "data.sources[0] finetune: 5 rows read" in proc.stdout
