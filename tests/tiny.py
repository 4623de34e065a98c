"""A tiny Llama model and tokenizer built from a config in seconds, with SmolLM2's chat template and its pad == EOS.

Tests train and generate with this instead of the real 135M model so that the suite runs in minutes on 2 cores.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

# SmolLM2-135M-Instruct's own chat template (ChatML with a default system prompt).
CHATML = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}"
    "{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

WORDS = [
    "the",
    "app",
    "crashes",
    "when",
    "I",
    "open",
    "settings",
    "login",
    "fails",
    "refund",
    "please",
    "urgent",
    "error",
    "version",
    "android",
    "ios",
    "windows",
    "mac",
    "export",
    "import",
    "file",
    "save",
    "account",
    "password",
    "email",
    "billing",
    "invoice",
    "team",
    "blocked",
    "slow",
    "update",
    "broken",
    "button",
    "page",
    "screen",
    "sync",
    "data",
    "lost",
    "help",
    "thanks",
    "hello",
    "hi",
    "question",
    "feature",
]


def make_rows(n: int, seed: int = 0) -> list[dict]:
    """Input → JSON rows with a learnable rule: the label is a function of which keyword the text contains."""
    rng = random.Random(seed)
    kinds = {"crashes": "bug", "refund": "billing", "password": "account", "feature": "request"}
    rows = []
    for _ in range(n):
        key = rng.choice(list(kinds))
        words = [rng.choice(WORDS) for _ in range(rng.randint(3, 9))]
        words.insert(rng.randint(0, len(words)), key)
        urgent = rng.random() < 0.3
        text = ("urgent " if urgent else "") + " ".join(words)
        rows.append({"input": text, "output": {"kind": kinds[key], "urgent": urgent}})
    return rows


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def build_tiny_model(folder: Path, *, layers: int = 2, hidden: int = 32) -> Path:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    corpus = [json.dumps(r) for r in make_rows(400)] + [CHATML, "system user assistant helpful AI SmolLM"] * 5
    trainer = trainers.BpeTrainer(
        vocab_size=512, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    bpe.train_from_iterator(corpus, trainer)
    tok = PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        pad_token="<|im_end|>",
        unk_token="<|endoftext|>",
    )
    tok.chat_template = CHATML
    config = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=hidden,
        intermediate_size=hidden * 2,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        tie_word_embeddings=True,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    import torch

    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def scramble_weights(model, seed: int = 0) -> None:
    """Large random matrices (virtual tokens included): a tiny model then says something that depends on every token
    of its prompt, instead of "\\n" whatever it is asked, so a generation path that loses or misplaces a token shows."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0, 0.5, generator=gen)


def greedy_reference(model, fmt, prompt_ids: list[int], max_new_tokens: int) -> str:
    """Greedy decoding of one prompt through the plain forward (the training one): no padding, no KV cache."""
    import torch

    answer: list[int] = []
    with torch.no_grad():
        for _ in range(max_new_tokens):
            nxt = int(model(input_ids=torch.tensor([prompt_ids + answer])).logits[0, -1].argmax())
            if nxt in fmt.stop_ids:
                break
            answer.append(nxt)
    return fmt.tok.decode(answer, skip_special_tokens=True).strip()
