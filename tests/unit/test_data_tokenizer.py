"""data.tokenizer.locate_model: the one answer to "does this model reference resolve?", used by
the run's pre-check (check_model_ref) and by `stardss check` (resolve_pretrained)."""
from __future__ import annotations

import pytest

from stardss.commands.check import resolve_pretrained
from stardss.data.tokenizer import (
    MODEL_FILES,
    TOKENIZER_FILES,
    check_model_ref,
    is_repo_id,
    locate_model,
)
from stardss.errors import ModelNotFound


@pytest.fixture
def hub(tmp_path, monkeypatch):
    """An empty Hugging Face cache, offline; `add(repo, file)` puts a file in a snapshot."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")

    def add(repo: str, name: str):
        root = tmp_path / "hub" / f"models--{repo.replace('/', '--')}"
        snap = root / "snapshots" / ("b" * 40)
        snap.mkdir(parents=True, exist_ok=True)
        (root / "refs").mkdir(exist_ok=True)
        (root / "refs" / "main").write_text("b" * 40)
        (snap / name).write_text("{}")
        return snap

    return add


def test_folders_need_one_of_the_files(tmp_path, hub):
    model, adapter, empty = tmp_path / "m", tmp_path / "a", tmp_path / "e"
    for d in (model, adapter, empty):
        d.mkdir()
    (model / "config.json").write_text("{}")
    (adapter / "adapter_config.json").write_text("{}")
    assert locate_model("k", str(model), None).found
    assert locate_model("k", str(adapter), None).found  # a LoRA adapter folder
    miss = locate_model("k", str(empty), None)
    assert not miss.found and miss.detail == (
        f"folder {empty} has no config.json or adapter_config.json: not a Hugging Face model "
        "folder")
    assert not locate_model("k", str(model), None, TOKENIZER_FILES).found
    (tmp_path / "f.txt").write_text("x")
    assert locate_model("k", str(tmp_path / "f.txt"), None).detail == \
        f"{tmp_path / 'f.txt'} is a file, not a model folder or Hub id"


def test_hub_ids_resolve_from_the_cache_offline(tmp_path, hub):
    snap = hub("someone/tiny", "config.json")
    loc = locate_model("model.name_or_path", "someone/tiny", None)
    assert loc.found and not loc.downloads
    assert loc.detail == f"Hub id someone/tiny in the local cache ({snap})"
    check_model_ref("someone/tiny")  # no raise
    with pytest.raises(ModelNotFound, match=r"^model.tokenizer: no such folder: someone/tiny, "
                                            r"and Hub id someone/tiny is not in the local "
                                            r"Hugging Face cache \(tokenizer_config.json"):
        check_model_ref("someone/tiny", "model.tokenizer", tokenizer=True)
    hub("someone/adapter", "adapter_config.json")  # any of the files: a LoRA adapter repo
    assert locate_model("k", "someone/adapter", None).found
    hub("gpt2", "config.json")  # a single-name (legacy) Hub id is a Hub id too
    assert locate_model("k", "gpt2", None).found


def test_misses_say_what_is_missing_in_both_callers(tmp_path, hub):
    missing = tmp_path / "no" / "model"
    with pytest.raises(ModelNotFound) as err:
        check_model_ref(str(missing), "--model dss")
    assert str(err.value) == f"--model dss: no such folder: {missing} (and not a Hub id)"
    line = resolve_pretrained("--model dss", str(missing), None, MODEL_FILES)
    assert (line.status, line.detail) == ("FAIL", f"no such folder: {missing} (and not a Hub id)")
    assert not is_repo_id("a/b/c") and not is_repo_id("a--b") and not is_repo_id("x.")


def test_online_an_uncached_hub_id_is_left_to_the_download(tmp_path, hub, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    loc = locate_model("k", "someone/elsewhere", None)
    assert loc.found and loc.downloads
    check_model_ref("someone/elsewhere")  # the run lets transformers download it
