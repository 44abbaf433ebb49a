"""LoRA checkpoints without DeepSpeed: the merged folder, the adapter folder, adapter-only."""
from dataclasses import replace

import pytest
import torch

from stardss.config.schema import LoraConfig, ModelConfig
from stardss.train.checkpoint import _save_lora
from stardss.train.engine import add_lora
from tests.helpers import tiny_config, tokenizer

LORA = LoraConfig(r=4, alpha=8.0, dropout=0.0, target_modules=["q_proj", "v_proj"], merge=True)


@pytest.fixture()
def trained(tmp_path):
    """A base model folder and a PeftModel on it whose adapters are not zero (as if trained)."""
    from transformers import AutoModelForCausalLM

    from stardss.demo.model import build_tiny_llama

    build_tiny_llama(tiny_config(), tokenizer(), seed=0).save_pretrained(tmp_path / "base")
    model = add_lora(AutoModelForCausalLM.from_pretrained(tmp_path / "base"), LORA)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    config = ModelConfig(name_or_path=str(tmp_path / "base"), lora=LORA)
    ids = torch.tensor([[1, 5, 9, 12, 40, 3]])
    with torch.no_grad():
        want = model(input_ids=ids).logits
    return model, config, ids, want


def _logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits


@pytest.mark.parametrize("gathered", [False, True])
def test_merged_and_adapter_folders_give_the_trained_models_outputs(trained, tmp_path,
                                                                    gathered):
    """gathered: the ZeRO-3 path, where only a state dict of the trained model is at hand."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model, config, ids, want = trained
    state = {k: v.clone() for k, v in model.state_dict().items()} if gathered else None
    folder = tmp_path / "out"
    _save_lora(model, state, config, False, str(folder))
    merged = AutoModelForCausalLM.from_pretrained(folder)
    torch.testing.assert_close(_logits(merged, ids), want, rtol=1e-4, atol=1e-5)
    assert not any("lora" in k for k in merged.state_dict())
    base = AutoModelForCausalLM.from_pretrained(config.name_or_path)
    adapted = PeftModel.from_pretrained(base, str(folder / "adapter"))
    torch.testing.assert_close(_logits(adapted, ids), want, rtol=1e-4, atol=1e-5)


def test_merge_false_writes_the_adapter_only(trained, tmp_path):
    model, config, ids, want = trained
    _save_lora(model, None, replace(config, lora=replace(LORA, merge=False)), False,
               str(tmp_path / "a"))
    names = {p.name for p in (tmp_path / "a").iterdir()}
    assert {"adapter_config.json", "adapter_model.safetensors"} <= names
    assert "model.safetensors" not in names and not (tmp_path / "a" / "adapter").exists()


def test_a_gathered_state_that_does_not_fit_fails_by_name(trained, tmp_path):
    model, config, _, _ = trained
    state = {k: v for k, v in model.state_dict().items() if "lora_A" not in k}
    with pytest.raises(RuntimeError, match="LoRA save: gathered state does not fit"):
        _save_lora(model, state, config, False, str(tmp_path / "x"))


def _restore_from(monkeypatch, folder):
    """restore() as a restarted worker runs it, handed `folder` as Ray Train's latest."""
    import ray.train
    from ray.train import Checkpoint

    from stardss.train.checkpoint import restore

    monkeypatch.setattr(ray.train, "get_checkpoint", lambda: Checkpoint.from_directory(folder))
    return restore(policy=None)  # neither case reaches the DeepSpeed load


def test_a_restart_after_the_final_report_finds_the_run_finished(monkeypatch, tmp_path):
    # a worker that dies at the closing barrier leaves the final folder as the latest checkpoint
    from stardss.train.checkpoint import LOG_FILE

    (tmp_path / LOG_FILE).write_text("{}")
    assert _restore_from(monkeypatch, tmp_path).finished


def test_a_checkpoint_that_is_neither_kind_fails_naming_it(monkeypatch, tmp_path):
    with pytest.raises(RuntimeError, match=f"latest checkpoint {tmp_path} has neither"):
        _restore_from(monkeypatch, tmp_path)
