"""The loss mask and the prompt: made in one place, identical at training and inference."""

from __future__ import annotations

import pytest
import torch

from tasktune.batching import collate
from tasktune.data import Example
from tasktune.render import IGNORE, ChatFormat
from tasktune.runtime import PAD_MULTIPLE

ROW = [{"role": "user", "content": "urgent the app crashes"}, {"role": "assistant", "content": '{"kind": "bug"}'}]


def test_prompt_masked_answer_and_eos_supervised(tiny_tokenizer):
    fmt = ChatFormat(tiny_tokenizer)
    enc = fmt.encode_example(ROW)
    prompt = fmt.encode_prompt(ROW[:1])
    n_prompt = len(prompt)
    assert enc.labels[:n_prompt] == [IGNORE] * n_prompt
    answer = tiny_tokenizer.encode('{"kind": "bug"}', add_special_tokens=False)
    assert enc.labels[n_prompt:] == [*answer, tiny_tokenizer.eos_token_id]
    assert tiny_tokenizer.decode(enc.labels[-1:]) == "<|im_end|>"


def test_eos_stays_supervised_when_pad_equals_eos(tiny_tokenizer):
    assert tiny_tokenizer.pad_token_id == tiny_tokenizer.eos_token_id  # the SmolLM2 trap, reproduced
    fmt = ChatFormat(tiny_tokenizer)
    short = fmt.encode_example(ROW)
    long = fmt.encode_example([ROW[0], {"role": "assistant", "content": '{"kind": "bug", "urgent": true, "x": 1}'}])
    batch = collate([short, long], tiny_tokenizer.pad_token_id)
    eos = tiny_tokenizer.eos_token_id
    n = len(short.input_ids)
    # the short row is padded with the EOS id, yet its own EOS is supervised and its padding is not
    assert batch["input_ids"][0, n:].eq(eos).all()
    assert batch["labels"][0, n - 1].item() == eos
    assert batch["labels"][0, n:].eq(IGNORE).all()
    assert batch["attention_mask"][0, n:].eq(0).all()
    assert batch["labels"][1, len(long.input_ids) - 1].item() == eos


def test_training_render_equals_inference_render(tiny_tokenizer):
    fmt = ChatFormat(tiny_tokenizer)
    instruction = "Answer in JSON."
    for instr in (None, instruction):
        msgs = fmt.with_instruction(ROW, instr)
        enc = fmt.encode_example(msgs)
        prompt = fmt.encode_prompt(msgs[:-1])
        assert enc.input_ids[: len(prompt)] == prompt
        first_supervised = next(i for i, t in enumerate(enc.labels) if t != IGNORE)
        assert first_supervised == len(prompt)


def test_predictor_prompt_is_the_training_prefix(tiny_model):
    from tasktune.models import load_base
    from tasktune.predict import Predictor

    model, tok = load_base(tiny_model)
    pred = Predictor(model, tok, instruction=None, output_kind="json", max_new_tokens=8, name="t")
    ex = Example(ROW)
    enc = pred.fmt.encode_example(ROW)
    prompt = pred.prompt_ids(ex)
    assert enc.input_ids[: len(prompt)] == prompt


def test_instruction_goes_into_system_turn(tiny_tokenizer):
    fmt = ChatFormat(tiny_tokenizer)
    text = fmt.prompt_text(fmt.with_instruction(ROW[:1], "RULES"))
    assert text.startswith("<|im_start|>system\nRULES<|im_end|>")
    assert "SmolLM" not in text  # the instruction replaces the template's default system prompt


def test_multi_turn_supervises_every_assistant_turn(tiny_tokenizer):
    fmt = ChatFormat(tiny_tokenizer)
    msgs = [
        {"role": "user", "content": "hello"},
        {"role": "assistant", "content": "hi"},
        {"role": "user", "content": "refund please"},
        {"role": "assistant", "content": "billing"},
    ]
    enc = fmt.encode_example(msgs)
    full = tiny_tokenizer.apply_chat_template(msgs, tokenize=False)
    assert tiny_tokenizer.decode(enc.input_ids) == full.rstrip("\n")
    supervised = tiny_tokenizer.decode([t for t in enc.labels if t != IGNORE])
    assert supervised == "hi<|im_end|>billing<|im_end|>"


def test_template_fallback_for_tokenizer_without_chat_template(tiny_model):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model)
    tok.chat_template = None
    fmt = ChatFormat(tok)
    enc = fmt.encode_example(ROW)
    assert enc.labels[-1] == tok.eos_token_id
    assert "### Response:" in fmt.prompt_text(ROW[:1])


def test_collate_shapes(tiny_tokenizer):
    fmt = ChatFormat(tiny_tokenizer)
    batch = collate([fmt.encode_example(ROW)] * 3, tiny_tokenizer.pad_token_id)
    assert batch["input_ids"].shape == batch["labels"].shape == batch["attention_mask"].shape
    assert batch["input_ids"].dtype == torch.long
    assert batch["input_ids"].shape[1] % PAD_MULTIPLE == 0  # few distinct shapes: see runtime.PAD_MULTIPLE
    assert batch["attention_mask"].sum(1).tolist() == [len(fmt.encode_example(ROW).input_ids)] * 3


def test_system_prompt_takes_the_place_of_the_templates_default_and_a_conversations_own_wins(tiny_tokenizer):
    before = tiny_tokenizer.chat_template
    fmt = ChatFormat(tiny_tokenizer, system_prompt="")
    assert fmt.prompt_text(ROW[:1]) == "<|im_start|>system\n<|im_end|>\n<|im_start|>user\nurgent the app crashes" \
        "<|im_end|>\n<|im_start|>assistant\n"  # fmt: skip
    default = ChatFormat(tiny_tokenizer).encode_prompt(ROW[:1])
    assert len(fmt.encode_prompt(ROW[:1])) < len(default)
    own = [{"role": "system", "content": "MINE"}, ROW[0]]
    assert fmt.prompt_text(own) == ChatFormat(tiny_tokenizer).prompt_text(own)  # a client's own system turn stays
    enc = fmt.encode_example(ROW)
    prompt = fmt.encode_prompt(ROW[:1])
    assert enc.input_ids[: len(prompt)] == prompt
    assert next(i for i, t in enumerate(enc.labels) if t != IGNORE) == len(prompt)
    assert fmt.prompt_text(fmt.with_instruction(ROW[:1], "RULES")).startswith("<|im_start|>system\nRULES<|im_end|>")
    assert tiny_tokenizer.chat_template == before  # the shared tokenizer is not changed


@pytest.mark.parametrize("text", ["", "Be brief.", 'say "hi" \\ {% raw %}{{ x }}%} \U0001f600 \u00fc\nline two'])
def test_system_prompt_in_the_template_renders_exactly_that_text(tiny_tokenizer, text):
    from tasktune.render import with_default_system

    template = with_default_system(tiny_tokenizer.chat_template, text)
    got = tiny_tokenizer.apply_chat_template(ROW[:1], chat_template=template, tokenize=False)
    want = tiny_tokenizer.apply_chat_template([{"role": "system", "content": text}, *ROW[:1]], tokenize=False)
    assert got == want
    again = with_default_system(template, "other")  # tuning a tuned model replaces the default, never stacks it
    assert again == with_default_system(tiny_tokenizer.chat_template, "other")


def test_system_prompt_is_refused_for_a_template_without_a_system_role(tiny_model):
    from transformers import AutoTokenizer

    from tasktune.errors import TaskTuneError

    tok = AutoTokenizer.from_pretrained(tiny_model)
    tok.chat_template = (
        "{% for m in messages %}{% if m['role'] == 'system' %}{{ raise_exception('no system role') }}{% endif %}"
        "{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>\n' }}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
    )
    with pytest.raises(TaskTuneError, match="no system role") as e:
        ChatFormat(tok, system_prompt="")
    assert "unset train.system_prompt" in e.value.hint
