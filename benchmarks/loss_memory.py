"""Benchmark: the peak memory of a dss step whose logits never exist whole (stardss/train/
hidden.py) against the step that holds them (the policy's and the reference's (B, T, V)
logits, as every trainer that calls `model(...).logits` does).

The issue's shape: a 33M-parameter Llama with Llama 3's 128,256-token vocabulary (hidden 128,
2 layers, untied head: the embedding and the head are 16.4M parameters each), one micro-batch
of 2 x 2048 tokens, dss with the k2 KL to a live reference. Each variant runs in a fresh
process (peak RSS is a process's high-water mark) through the project's loss
(`stardss_loss`): `whole` with `model(...).logits`, `chunked` with `forward_hidden` (chunks of
256 positions). The step's memory is the process's peak RSS minus its RSS just before the
step (models loaded, inputs built); `loss_peak_memory_ratio` = chunked / whole (goal <= 0.4).

Prints ONE JSON line (~1 min). Run: .venv/bin/python benchmarks/loss_memory.py [--tokens N]
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

VOCAB, HIDDEN = 128_256, 128


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _step(variant: str, batch: int, tokens: int) -> dict:
    """One dss forward + backward of `variant` in this process."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from stardss.train.hidden import forward_hidden
    from stardss.train.loss import reference_token_logprobs, stardss_loss

    torch.set_num_threads(2)
    config = LlamaConfig(vocab_size=VOCAB, hidden_size=HIDDEN, intermediate_size=4 * HIDDEN,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4,
                         max_position_embeddings=tokens, tie_word_embeddings=False)
    torch.manual_seed(0)
    policy = LlamaForCausalLM(config).float().train()
    reference = LlamaForCausalLM(config).float().eval().requires_grad_(False)
    g = torch.Generator().manual_seed(1)
    inputs = {"input_ids": torch.randint(0, VOCAB, (batch, tokens), generator=g),
              "attention_mask": torch.ones(batch, tokens, dtype=torch.long)}
    mask = torch.ones(batch, tokens, dtype=torch.long)
    mask[:, : tokens // 8] = 0  # the prompt
    weights = torch.rand(batch, tokens, generator=g)
    before = _rss_bytes()
    started = time.perf_counter()
    if variant == "whole":
        logits = policy(**inputs).logits
        with torch.no_grad():
            ref = reference(**inputs).logits
    else:
        logits = forward_hidden(policy, inputs)
        with torch.no_grad():
            ref = forward_hidden(reference, inputs)
    ref_logp = reference_token_logprobs(ref, inputs["input_ids"])
    del ref
    out = stardss_loss(logits, inputs["input_ids"], mask, weights, "dss", ref_token_logp=ref_logp)
    out.total.backward()
    seconds = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    params = sum(p.numel() for p in policy.parameters())
    return {"variant": variant, "params": params, "rss_before_step": before, "peak_rss": peak,
            "step_bytes": peak - before, "seconds": seconds,
            "loss": float(out.total) / float(out.tokens),
            "head_grad_norm": float(policy.lm_head.weight.grad.norm())}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--tokens", type=int, default=2048)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--variant", choices=["whole", "chunked"], help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.variant:
        print(json.dumps(_step(args.variant, args.batch, args.tokens)))
        return
    got = {}
    for variant in ("whole", "chunked"):
        run = subprocess.run([sys.executable, __file__, "--variant", variant,
                              "--tokens", str(args.tokens), "--batch", str(args.batch)],
                             capture_output=True, text=True, check=True)
        got[variant] = json.loads(run.stdout.strip().splitlines()[-1])
    whole, chunked = got["whole"], got["chunked"]
    gb = 2 ** 30
    print(json.dumps({
        "loss_peak_memory_ratio": round(chunked["step_bytes"] / whole["step_bytes"], 3),
        "peak_rss_ratio": round(chunked["peak_rss"] / whole["peak_rss"], 3),
        "whole_step_gb": round(whole["step_bytes"] / gb, 2),
        "chunked_step_gb": round(chunked["step_bytes"] / gb, 2),
        "whole_peak_rss_gb": round(whole["peak_rss"] / gb, 2),
        "chunked_peak_rss_gb": round(chunked["peak_rss"] / gb, 2),
        "rss_before_step_gb": round(whole["rss_before_step"] / gb, 2),
        "seconds_chunked_over_whole": round(chunked["seconds"] / whole["seconds"], 3),
        "same_loss": abs(chunked["loss"] - whole["loss"]) <= 1e-5 * max(1.0, abs(whole["loss"])),
        "head_grad_norm_rel_diff": abs(chunked["head_grad_norm"] - whole["head_grad_norm"])
        / whole["head_grad_norm"],
        "params": whole["params"], "batch": args.batch, "tokens": args.tokens,
        "vocab": VOCAB}))


if __name__ == "__main__":
    main()
