"""A tiny, seeded, randomly initialised chat model: smoke runs and tests, with no download.

The tokenizer is a small byte-level BPE trained on a fixed corpus and carries the same ChatML
chat template as SmolLM2, so every code path that works on it works on the real model.
"""

from __future__ import annotations

from pathlib import Path

import torch

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n' }}"
    "{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]

_CORPUS = [
    "You are a helpful assistant. Answer with the final number only.",
    "What is 3 + 4? The answer is 7. Let's think step by step.",
    "Compute 12 - 5 + 8 = 15. Final answer: 15",
    "system user assistant Question: Answer: \\boxed{42} -3 0.5 1,000",
] + [f"{a} + {b} = {a + b}. {a} - {b} = {a - b}." for a in range(10) for b in range(10)]


def build_tiny_tokenizer(vocab_size: int = 400):
    """Byte-level BPE over a fixed corpus: deterministic, ~0.1 s to train."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_CORPUS, trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token="<|endoftext|>",
    )
    tokenizer.chat_template = CHATML_TEMPLATE
    tokenizer.padding_side = "left"
    return tokenizer


def build_tiny_model(
    out_dir: str | Path, seed: int = 0, hidden_size: int = 64, layers: int = 2
) -> Path:
    """Write a tiny Llama + tokenizer folder (idempotent); returns the folder."""
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    out_dir = Path(out_dir)
    if (out_dir / "config.json").is_file() and (out_dir / "tokenizer_config.json").is_file():
        return out_dir
    tokenizer = build_tiny_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=hidden_size * 2,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    (tmp / "taoflow.json").write_text(
        '{"name": "tiny-random", "base_model": "tiny-random", "round": 0}\n'
    )
    tmp.rename(out_dir)
    return out_dir


def eos_leaning_policy(policy, bias: float):
    """A copy of ``policy`` whose LM head adds ``bias`` to the EOS logit, so rows stop at
    different steps (tests of stopping and finished-row compaction)."""
    import copy

    from taoflow.models import Policy

    model = copy.deepcopy(policy.model)
    head = model.lm_head
    biased = torch.nn.Linear(head.in_features, head.out_features, bias=True)
    with torch.no_grad():
        biased.weight.copy_(head.weight)
        biased.bias.zero_()
        biased.bias[policy.tokenizer.eos_token_id] = bias
    model.lm_head = biased
    return Policy(model=model, tokenizer=policy.tokenizer, lineage=dict(policy.lineage))
