"""Tracking: secrets never reach W&B files, runs of both roles land in one group, and the
metrics logged can be read back from the offline run files."""
import copy
import json
import math

import numpy as np
import pytest
from omegaconf import OmegaConf

from stardss.config.schema import WandbConfig
from stardss.tracking import SECRET_MARK, open_tracker, redact
from tests.wandb_support import all_bytes, read_run, run_dirs

WANDB_KEY = "0123456789abcdef0123456789abcdef01234567"
HF_TOKEN = "hf_" + "AbCdEfGhIjKlMnOpQrStUvWx"  # 24 characters after hf_
JOB = {
    "name": "job-visible-name",
    "model": {"name_or_path": "my-org/visible-model-xyz", "tokenizer": None},
    "ray": {"runtime_env": {"env_vars": {"WANDB_API_KEY": WANDB_KEY, "HF_TOKEN": HF_TOKEN,
                                         "HOME_NOTE": f"token is {HF_TOKEN}, ok"}}},
}


@pytest.fixture(autouse=True)
def wandb_env(monkeypatch, tmp_path):
    # offline only, quiet, and no git probing of the repository the tests run from
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_DISABLE_GIT", "true")
    monkeypatch.chdir(tmp_path)


# --- redact -----------------------------------------------------------------------------------

def test_redact_secret_keys_values_and_leaves_input_alone():
    obj = {
        "WANDB_API_KEY": "plain", "hf_token": 123, "password": ["a", "b"],
        "nested": [{"aws_secret_access_key": "x", "Authorization": "Bearer abcdefgh12345"}],
        "apiKey": "x", "HFToken": "x", "client-secret": "x", "db.passwd": "x", "Cookie": "x",
        "tokenizer": "gpt2", "max_new_tokens": 64, "tokens": [1, 2], "token_limit": 100,
        "batch_size": 8, "name_or_path": "meta-llama/Llama-3.2-1B", "key_path": "/k.pem",
        "HOME_NOTE": "hf_abcdefghijklmnopqrstuvwx",
        "notes": (f"aws AKIAABCDEFGHIJKLMNOP, {WANDB_KEY}; curl -H 'Authorization: Bearer "
                  "eyJhbGciOi.J9x' sk-proj-abcdefghijklmnopqrstuvwx https://me:pa55@host/x"),
        "revision": "e1945c40cd546c78e41f1151f4db032b271faeaa",
        "tokens_per_step": 4096,
    }
    before = copy.deepcopy(obj)
    out = redact(obj)
    assert obj == before
    for key in ("WANDB_API_KEY", "hf_token", "password", "apiKey", "HFToken", "client-secret",
                "db.passwd", "Cookie"):
        assert out[key] == SECRET_MARK, key
    assert out["nested"][0] == {"aws_secret_access_key": SECRET_MARK, "Authorization": SECRET_MARK}
    for key in ("tokenizer", "max_new_tokens", "tokens", "token_limit", "batch_size",
                "name_or_path", "key_path", "tokens_per_step"):
        assert out[key] == obj[key], key
    assert out["HOME_NOTE"] == SECRET_MARK
    notes = out["notes"]
    for secret in ("AKIAABCDEFGHIJKLMNOP", WANDB_KEY, "eyJhbGciOi", "sk-proj", "pa55"):
        assert secret not in notes, secret
    assert notes.startswith(f"aws {SECRET_MARK}, {SECRET_MARK}; curl")
    assert f"Bearer {SECRET_MARK}" in notes and f"https://me:{SECRET_MARK}@host/x" in notes
    assert out["revision"] == obj["revision"]  # a commit id is 40 hex too, but worth keeping


def test_redact_keeps_non_strings_and_ordinary_text():
    obj = {"lr": 1e-4, "ok": True, "none": None, "ids": (1, 2), "text": "the hf_ prefix, sk-1"}
    assert redact(obj) == {**obj, "ids": [1, 2]}


# --- trackers -------------------------------------------------------------------------------

def test_disabled_writes_nothing(tmp_path):
    for cfg in (WandbConfig(mode="disabled"), {"mode": "disabled"},
                OmegaConf.structured(WandbConfig(mode="disabled")), None):
        with open_tracker(cfg, job=JOB, group="g", role="driver", out_dir=str(tmp_path / "o")) as t:
            assert not t.enabled
            t.log({"a": 1.0}, step=0)
            t.summary({"a": 1.0})
        t.finish()
    assert list(tmp_path.iterdir()) == []


def test_bad_mode_fails_by_name(tmp_path):
    with pytest.raises(ValueError, match="tracking.wandb.mode"):
        open_tracker({"mode": "shared"}, job={}, group="g", role="r", out_dir=str(tmp_path))


def test_offline_run_logs_metrics_and_redacted_config(tmp_path):
    cfg = WandbConfig(mode="offline", dir=str(tmp_path / "wb"), tags=["t1"])
    tracker = open_tracker(cfg, job=JOB, group="grp", role="train", out_dir=str(tmp_path / "o"))
    assert tracker.enabled
    for step in range(3):
        tracker.log({"loss": np.float32(1.0 / (step + 1)), "nan": float("nan")}, step=step)
    tracker.summary({"final_acc": np.float64(0.75), "rows": np.int64(12)})
    tracker.finish()
    tracker.finish()  # idempotent

    (run_dir,) = run_dirs(tmp_path / "wb")
    assert run_dir.parent == tmp_path / "wb" / "wandb"
    assert not (tmp_path / "o").exists()
    blob = all_bytes(tmp_path)
    for secret in (WANDB_KEY.encode(), HF_TOKEN.encode()):
        assert secret not in blob
    assert b"my-org/visible-model-xyz" in blob and SECRET_MARK.encode() in blob

    run = read_run(run_dir)
    config = {item.key: json.loads(item.value_json) for item in run["run"].config.update}
    assert config["model"]["name_or_path"] == "my-org/visible-model-xyz"
    assert config["ray"]["runtime_env"]["env_vars"] == {
        "WANDB_API_KEY": SECRET_MARK, "HF_TOKEN": SECRET_MARK,
        "HOME_NOTE": f"token is {SECRET_MARK}, ok"}
    assert (run["run"].run_group, run["run"].job_type, run["run"].display_name) == (
        "grp", "train", "grp-train")
    assert list(run["run"].tags) == ["t1"]
    assert [h["_step"] for h in run["history"]] == [0, 1, 2]
    assert [h["loss"] for h in run["history"]] == pytest.approx([1.0, 0.5, 1 / 3])  # float32
    assert all(math.isnan(h["nan"]) for h in run["history"])
    assert run["summary"]["final_acc"] == 0.75 and run["summary"]["rows"] == 12
    assert run["summary"]["loss"] == pytest.approx(1 / 3)
    assert run["exit_code"] == 0


def test_driver_then_train_runs_in_one_process_share_the_group(tmp_path):
    cfg = OmegaConf.structured(WandbConfig())  # dir null -> <out_dir>/wandb
    out = tmp_path / "out"
    for role in ("driver", "train"):
        with open_tracker(cfg, job=JOB, group="job-1", role=role, out_dir=str(out)) as t:
            t.log({f"{role}_metric": 1.0})
    # and overlapping: a run still open in this process is neither reused nor finished
    driver = open_tracker(cfg, job=JOB, group="job-2", role="driver", out_dir=str(out))
    with open_tracker({"mode": "offline"}, job=JOB, group="job-2", role="train",
                      out_dir=str(out)) as t:
        assert t.run is not driver.run
        t.log({"train_metric": 2.0})
    driver.log({"driver_metric": 3.0})
    driver.finish()

    runs = {r["run"].display_name: r for r in map(read_run, run_dirs(out / "wandb"))}
    seen = {name: (r["run"].run_group, r["run"].job_type, r["summary"], r["exit_code"])
            for name, r in runs.items()}
    expected = {"job-1-driver": ("job-1", "driver", "driver_metric", 1.0),
                "job-1-train": ("job-1", "train", "train_metric", 1.0),
                "job-2-driver": ("job-2", "driver", "driver_metric", 3.0),
                "job-2-train": ("job-2", "train", "train_metric", 2.0)}
    assert sorted(seen) == sorted(expected)
    for name, (group, role, metric, value) in expected.items():
        assert seen[name][:2] == (group, role)
        assert seen[name][2][metric] == value and seen[name][3] == 0


def test_exception_propagates_and_marks_run_failed(tmp_path):
    tracker = open_tracker({"mode": "offline"}, job={}, group="g", role="train",
                           out_dir=str(tmp_path))
    with pytest.raises(RuntimeError, match="boom"), tracker:
        tracker.log({"loss": 1.0}, step=0)
        raise RuntimeError("boom")
    assert not tracker.enabled
    (run_dir,) = run_dirs(tmp_path)
    assert read_run(run_dir)["exit_code"] == 1


def test_wandb_mode_disabled_in_env_is_a_kill_switch(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "disabled")
    with open_tracker({"mode": "offline"}, job=JOB, group="g", role="train",
                      out_dir=str(tmp_path)) as t:
        assert not t.enabled
        t.log({"a": 1})
    assert list(tmp_path.iterdir()) == []


def test_a_table_of_samples_is_logged_with_secrets_redacted(tmp_path):
    cfg = WandbConfig(mode="offline", dir=str(tmp_path / "wb"))
    with open_tracker(cfg, job={}, group="g", role="eval", out_dir=str(tmp_path)) as tracker:
        tracker.table("eval/m/harmful", ["key", "response", "strict"],
                      [["harmful/0", "Sure! The code is 7-3-9-1.", "unsafe"],
                       ["harmful/1", f"my key is {WANDB_KEY}", "safe"]])
        tracker.table("eval/m/empty", ["key"], [])  # nothing logged for no rows
    (run_dir,) = run_dirs(tmp_path / "wb")
    (entry,) = [h for h in read_run(run_dir)["history"] if "eval/m/harmful/_type" in h]
    assert entry["eval/m/harmful/_type"] == "table-file"
    assert (entry["eval/m/harmful/nrows"], entry["eval/m/harmful/ncols"]) == (2, 3)
    assert not any(k.startswith("eval/m/empty") for h in read_run(run_dir)["history"] for k in h)
    (table,) = run_dir.glob("files/media/table/eval/m/harmful_*.table.json")
    assert json.loads(table.read_text())["data"] == [
        ["harmful/0", "Sure! The code is 7-3-9-1.", "unsafe"],
        ["harmful/1", f"my key is {SECRET_MARK}", "safe"]]
    assert WANDB_KEY.encode() not in all_bytes(tmp_path)
