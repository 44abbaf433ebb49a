"""The loss from hidden states in chunks (logits never whole) against the loss from the model's
own whole logits: same values and parameter gradients, every loss kind; the output head of the
families with a post-head transform; the fallback for a transform stardss does not know."""
import pytest
import torch
from transformers import (
    CohereConfig,
    CohereForCausalLM,
    Gemma2Config,
    Gemma2ForCausalLM,
    GraniteConfig,
    GraniteForCausalLM,
    LlamaConfig,
    LlamaForCausalLM,
)

from stardss.train.hidden import (
    Hidden,
    choose_head,
    forward_hidden,
    head_reproduces_logits,
    identity,
    output_head,
)
from stardss.train.loss import reference_token_logprobs, stardss_loss

V = 97
SMALL = dict(vocab_size=V, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
             num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=64)


def _model(cls, config_cls, seed=0, **extra):
    torch.manual_seed(seed)
    return cls(config_cls(**SMALL, **extra)).float().eval()


def _batch(seed=0, B=3, T=11):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, V, (B, T), generator=g)
    attn = torch.ones(B, T, dtype=torch.long)
    attn[1, 8:] = 0  # a right-padded row
    mask = torch.zeros(B, T, dtype=torch.long)
    mask[0, 3:], mask[1, 2:8], mask[2, 5:] = 1, 1, 1
    return {"input_ids": ids, "attention_mask": attn}, mask, torch.rand(B, T, generator=g)


FAMILIES = [
    (LlamaForCausalLM, LlamaConfig, {}),
    (Gemma2ForCausalLM, Gemma2Config, dict(final_logit_softcapping=3.0, head_dim=16)),
    (GraniteForCausalLM, GraniteConfig, dict(logits_scaling=4.0)),
    (CohereForCausalLM, CohereConfig, dict(logit_scale=0.25)),
]


@pytest.mark.parametrize("cls,config_cls,extra", FAMILIES, ids=lambda x: getattr(x, "__name__", ""))
def test_the_head_of_each_family_gives_its_own_logits(cls, config_cls, extra):
    model = _model(cls, config_cls, **extra)
    inputs, _, _ = _batch()
    with torch.no_grad():
        want = model(**inputs).logits
        hidden = forward_hidden(model, inputs)
        got = hidden.head(hidden.states)
    assert hidden.states.shape == (*inputs["input_ids"].shape, SMALL["hidden_size"])
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    assert head_reproduces_logits(model, inputs)


def _loss_and_grads(model, ref_model, inputs, mask, weights, kind, estimator, chunked, chunk):
    model.zero_grad(set_to_none=True)
    if chunked:
        policy = forward_hidden(model, inputs)
        with torch.no_grad():
            ref = forward_hidden(ref_model, inputs)
    else:
        policy = model(**inputs).logits
        with torch.no_grad():
            ref = ref_model(**inputs).logits
    kw = {"ref_logits": ref} if estimator == "full" else {
        "ref_token_logp": reference_token_logprobs(ref, inputs["input_ids"], chunk)}
    out = stardss_loss(policy, inputs["input_ids"], mask, weights, kind, kl_coef=0.7,
                       kl_estimator=estimator, chunk=chunk, **kw)
    out.total.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return out, grads


@pytest.mark.parametrize("kind,estimator", [("sft", "k2"), ("rs", "k2"), ("reweight", "k2"),
                                            ("dss", "k2"), ("dss", "k3"), ("dss", "full"),
                                            ("kl_only", "k1"), ("kl_only", "full")])
def test_chunked_loss_from_hidden_states_equals_the_whole_logits_loss(kind, estimator):
    model = _model(LlamaForCausalLM, LlamaConfig, seed=1)
    ref_model = _model(LlamaForCausalLM, LlamaConfig, seed=2).requires_grad_(False)
    inputs, mask, weights = _batch(seed=3)
    whole, whole_grads = _loss_and_grads(model, ref_model, inputs, mask, weights, kind,
                                         estimator, chunked=False, chunk=256)
    # chunk=4 cuts the 10 predicted positions into 3 chunks, the last one short
    part, part_grads = _loss_and_grads(model, ref_model, inputs, mask, weights, kind,
                                       estimator, chunked=True, chunk=4)
    for field in ("total", "ce", "kl", "weight", "tokens"):
        torch.testing.assert_close(getattr(part, field), getattr(whole, field),
                                   atol=1e-5, rtol=1e-5)
    assert set(part_grads) == set(whole_grads) and "lm_head.weight" in part_grads
    for name, g in whole_grads.items():
        torch.testing.assert_close(part_grads[name], g, atol=1e-5, rtol=1e-5, msg=name)


class DoubledLlama(LlamaForCausalLM):
    """A family whose forward transforms its logits in a way output_head does not know."""

    def forward(self, *args, **kwargs):
        out = super().forward(*args, **kwargs)
        out.logits = out.logits * 2.0
        return out


def test_an_unknown_post_head_transform_falls_back_to_whole_logits_with_a_warning():
    warned = []
    assert choose_head(_model(DoubledLlama, LlamaConfig), warned.append) is identity
    assert len(warned) == 1 and "DoubledLlama" in warned[0] and "whole logits" in warned[0]
    model = _model(LlamaForCausalLM, LlamaConfig)
    assert choose_head(model, warned.append) is not identity and len(warned) == 1
    inputs, _, _ = _batch()
    whole = forward_hidden(model, inputs, head=identity)
    assert isinstance(whole, Hidden) and whole.states.shape[-1] == V


def test_the_head_is_found_under_a_peft_wrapper():
    from peft import LoraConfig, get_peft_model

    base = _model(LlamaForCausalLM, LlamaConfig)
    peft = get_peft_model(base, LoraConfig(r=2, target_modules=["q_proj"]))
    inputs, _, _ = _batch()
    with torch.no_grad():
        hidden = forward_hidden(peft, inputs)
        torch.testing.assert_close(output_head(peft)(hidden.states), peft(**inputs).logits)
