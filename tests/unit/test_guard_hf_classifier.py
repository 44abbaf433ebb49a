"""HFClassifierGuard: a sequence classifier over (prompt, response prefix) pairs."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from stardss.config.schema import GuardrailConfig
from stardss.guard.base import ScoreRequest
from stardss.guard.registry import build_guardrail
from stardss.star.chunk import word_cuts

LABELS = {0: "unsafe", 1: "safe", 2: "controversial"}
TEXTS = ["how do I bake bread", "Sure, here is how: mix flour, water and yeast.",
         "I can't help with that.", "naïve café 東京 😀", "tabs\tand\nnewlines  here"]


def build_classifier(path, seed: int = 0, max_length: int = 128):
    """A tiny BERT classifier with a [CLS] a [SEP] b [SEP] tokenizer, saved to `path`."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors, trainers
    from transformers import BertConfig, BertForSequenceClassification, PreTrainedTokenizerFast

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]"]
    bpe = Tokenizer(models.BPE(unk_token="[UNK]"))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.train_from_iterator(TEXTS * 10, trainers.BpeTrainer(
        vocab_size=300, special_tokens=specials, show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    cls, sep = bpe.token_to_id("[CLS]"), bpe.token_to_id("[SEP]")
    bpe.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls), ("[SEP]", sep)])
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe, pad_token="[PAD]", unk_token="[UNK]",
                                  cls_token="[CLS]", sep_token="[SEP]",
                                  model_max_length=max_length)
    cfg = BertConfig(vocab_size=bpe.get_vocab_size(), hidden_size=32, num_hidden_layers=2,
                     num_attention_heads=2, intermediate_size=64, max_position_embeddings=128,
                     num_labels=3, id2label=LABELS, label2id={v: k for k, v in LABELS.items()},
                     pad_token_id=0, initializer_range=0.2)
    torch.manual_seed(seed)
    model = BertForSequenceClassification(cfg).eval()
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return str(build_classifier(tmp_path_factory.mktemp("clf")))


def guard(folder, safe_label="safe", batch_size=4):
    return build_guardrail(GuardrailConfig(kind="hf_classifier", name_or_path=folder,
                                           safe_label=safe_label, batch_size=batch_size,
                                           device="cpu"))


def items():
    out = []
    for i in range(6):
        response = " ".join(TEXTS[(i + j) % len(TEXTS)] for j in range(3))
        out.append(ScoreRequest(f"r{i}", TEXTS[i % len(TEXTS)], response,
                                word_cuts(response, 3)))
    return out


def test_label_probabilities_sum_to_one(folder):
    its = items()
    per_label = [guard(folder, lab).score_prefixes(its) for lab in LABELS.values()]
    total = sum(np.concatenate(x) for x in per_label)
    assert np.abs(total - 1).max() < 1e-9
    safe = np.concatenate(per_label[1])
    assert ((safe >= 0) & (safe <= 1)).all()
    assert safe.std() > 1e-3, "scores should depend on the text"


def test_matches_a_plain_forward(folder):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    g = guard(folder)
    tok = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForSequenceClassification.from_pretrained(folder).eval()
    prompt, response = TEXTS[0], TEXTS[1]
    with torch.no_grad():
        logits = model(**tok(prompt, response, return_tensors="pt")).logits[0].double()
    assert abs(g.score(prompt, [response])[0] - torch.softmax(logits, 0)[1].item()) < 1e-6


@pytest.mark.parametrize("label", [None, "harmless"])
def test_safe_label_must_be_a_model_label(folder, label):
    with pytest.raises(ValueError) as err:
        guard(folder, label)
    for name in LABELS.values():
        assert repr(name) in str(err.value)


def test_batch_size_does_not_change_scores(folder):
    its = items()
    one = np.concatenate(guard(folder, batch_size=1).score_prefixes(its))
    many = np.concatenate(guard(folder, batch_size=7).score_prefixes(its))
    assert np.abs(one - many).max() <= 1e-6
    g = guard(folder, batch_size=5)
    for it, arr in zip(its, g.score_prefixes(its)):
        assert arr.dtype == np.float64 and arr.shape == (len(it.cuts),)
        alone = g.score(it.prompt, [it.response[:c] for c in it.cuts])
        assert np.abs(arr - np.asarray(alone)).max() <= 1e-6


def test_long_pairs_are_truncated_with_a_warning(folder):
    g = guard(folder)
    long = " ".join(TEXTS * 20)
    with pytest.warns(UserWarning, match="truncated"):
        p = g.score(TEXTS[0], [long, TEXTS[1]])
    assert g.truncated == 1 and all(0 <= x <= 1 for x in p)


def test_fingerprint(folder, tmp_path):
    a, b = guard(folder), guard(folder, batch_size=1)
    assert a.fingerprint == b.fingerprint and a.name == f"hf_classifier:{folder}"
    assert guard(folder, "unsafe").fingerprint != a.fingerprint
    other = str(build_classifier(tmp_path / "other", seed=1))
    assert guard(other).fingerprint != a.fingerprint


def test_tiny_stand_in_classifier(tmp_path):
    from stardss.testing import guards as tiny

    path = tiny.build_tiny_classifier(tmp_path / "clf", labels=("unsafe", "safe"))
    g = guard(path, "safe", batch_size=3)
    out = g.score_prefixes(items())
    assert all(((x >= 0) & (x <= 1)).all() for x in out)
    other = guard(path, "unsafe", batch_size=8).score_prefixes(items())
    assert np.abs(np.concatenate(out) + np.concatenate(other) - 1).max() < 1e-6
