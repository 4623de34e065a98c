"""Labels are made here and nowhere else.

A row is rendered through the model's own chat template. Prompt tokens get label -100; the answer tokens and the
end-of-turn token that the template puts after an assistant answer (SmolLM2: `<|im_end|>`) are supervised, so the
tuned model learns to stop. Labels come from where each segment sits in the render, never from comparing token ids
with the pad id: SmolLM2's pad token *is* its EOS, and masking "pad" there would mask the answer's EOS too.

Inference builds its prompt with `encode_prompt`, the very function that builds the training prefix, so the two are
the same tokens up to the answer (tests/test_render.py proves it).

A run may set its own system prompt (`train.system_prompt`) in place of the template's default. It is written into
the chat template itself (`with_default_system`), and the run saves that template with its tokenizer, so every client
that renders the template (tasktune predict and serve, an exported model under transformers or vLLM) sends the prompt
the model was trained on.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from tasktune.errors import TaskTuneError

IGNORE = -100
_SENTINEL = "\u2063TASKTUNE_ANSWER\u2063"

# Used only for base models that ship no chat template.
FALLBACK_TEMPLATE = (
    "{% for m in messages %}"
    "{% if m['role'] == 'system' %}{{ m['content'] }}\n\n"
    "{% elif m['role'] == 'user' %}### Input:\n{{ m['content'] }}\n\n"
    "{% else %}### Response:\n{{ m['content'] }}{{ eos_token }}\n\n{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}### Response:\n{% endif %}"
)


@dataclass
class Encoded:
    input_ids: list[int]
    labels: list[int]

    @property
    def n_supervised(self) -> int:
        return sum(1 for t in self.labels if t != IGNORE)


def instruction_in_front(messages: list[dict], instruction: str | None, system_ok: bool = True) -> list[dict]:
    """A copy of `messages` with the instruction in front: joined with their system turn if they have one, else as a
    system turn of its own where the template takes one (`system_ok`), else before the first user turn."""
    messages = [dict(m) for m in messages]
    if not instruction:
        return messages
    if messages and messages[0]["role"] == "system":
        messages[0]["content"] = instruction + "\n\n" + messages[0]["content"]
    elif system_ok:
        messages.insert(0, {"role": "system", "content": instruction})
    else:
        first_user = next(i for i, m in enumerate(messages) if m["role"] == "user")
        messages[first_user]["content"] = instruction + "\n\n" + messages[first_user]["content"]
    return messages


# Put in front of a template by `with_default_system`; jinja's `if` opens no scope, so the `set` reaches the template.
_SYSTEM_HEAD = "{#- tasktune: default system prompt -#}\n"
_SYSTEM_SET = (
    "{%- if not messages or messages[0]['role'] != 'system' %}"
    "{%- set messages = [{'role': 'system', 'content': SYSTEM}] + messages %}{%- endif %}\n"
)


def with_default_system(template: str, system_prompt: str) -> str:
    """`template` with `system_prompt` as the system turn of every conversation that brings none (one that does
    keeps its own). Replaces an earlier default set this way, so tuning a tuned model does not stack them."""
    if template.startswith(_SYSTEM_HEAD):
        template = template.split("\n", 2)[2]
    # A JSON string is a valid jinja string literal (jinja decodes its escapes as Python's unicode-escape does).
    return _SYSTEM_HEAD + _SYSTEM_SET.replace("SYSTEM", json.dumps(system_prompt, ensure_ascii=False)) + template


class ChatFormat:
    """Renders messages for one tokenizer; knows which token ends an assistant turn.

    `system_prompt` (None: the template's own default) becomes the system turn of conversations that have none; the
    template that does it is `self.template` (train saves it with the run's tokenizer). The tokenizer is not changed."""

    def __init__(self, tokenizer, system_prompt: str | None = None):
        self.tok = tokenizer
        self.template = getattr(tokenizer, "chat_template", None) or FALLBACK_TEMPLATE
        self.end_text, self.end_ids = self._find_turn_end()
        self.stop_ids = sorted(
            {self.end_ids[-1], *([tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else [])}
        )
        self.system_ok = self._supports_system()
        if system_prompt is not None:
            self._set_system_prompt(system_prompt)

    def _set_system_prompt(self, system_prompt: str) -> None:
        if not self.system_ok:
            raise TaskTuneError(
                "system_prompt is set, but this model's chat template has no system role",
                "unset train.system_prompt (or --system-prompt) for this model",
            )
        probe = [{"role": "user", "content": "x"}]
        want = self._render([{"role": "system", "content": system_prompt}, *probe], True)
        self.template = with_default_system(self.template, system_prompt)
        got = self._render(probe, True)
        if got != want:  # a template that reads the conversation other than through `messages`
            raise TaskTuneError(
                f"this model's chat template does not take a default system prompt (renders {got!r},"
                f" expected {want!r})",
                "unset train.system_prompt (or --system-prompt) for this model",
            )

    # --- template probing -------------------------------------------------------------------------------------------
    def _render(self, messages: list[dict], add_generation_prompt: bool) -> str:
        return self.tok.apply_chat_template(
            messages, chat_template=self.template, tokenize=False, add_generation_prompt=add_generation_prompt
        )

    def _find_turn_end(self) -> tuple[str, list[int]]:
        """The text and tokens the template puts right after an assistant answer, up to its first special token."""
        text = self._render([{"role": "user", "content": "x"}, {"role": "assistant", "content": _SENTINEL}], False)
        suffix = text[text.index(_SENTINEL) + len(_SENTINEL) :]
        specials = [t for t in self.tok.all_special_tokens if t and t in suffix]
        specials += [
            t for t in getattr(self.tok, "added_tokens_encoder", {}) if t and t in suffix and t not in specials
        ]
        if specials:
            first = min(specials, key=suffix.index)
            end_text = suffix[: suffix.index(first) + len(first)]
        elif self.tok.eos_token:
            end_text = self.tok.eos_token  # template closes with plain text: stop on EOS instead
        else:
            raise TaskTuneError(
                "the tokenizer has no EOS token and its chat template no end-of-turn token",
                "use a tokenizer with an eos_token",
            )
        ids = self.tok.encode(end_text, add_special_tokens=False)
        return end_text, ids

    def _supports_system(self) -> bool:
        try:
            self._render([{"role": "system", "content": "s"}, {"role": "user", "content": "u"}], True)
            return True
        except Exception:  # templates that reject a system role raise from inside jinja
            return False

    # --- public API -------------------------------------------------------------------------------------------------
    def with_instruction(self, messages: list[dict], instruction: str | None) -> list[dict]:
        """Put the task instruction in front: as the system turn where the template has one, else before the input."""
        return instruction_in_front(messages, instruction, self.system_ok)

    def prompt_text(self, prompt_messages: list[dict]) -> str:
        return self._render(prompt_messages, True)

    def full_text(self, messages: list[dict]) -> str:
        """The whole conversation as the template renders it, answers included."""
        return self._render(messages, False)

    def encode_prompt(self, prompt_messages: list[dict]) -> list[int]:
        """Token ids that inference sends: the rendered conversation up to the start of the answer."""
        return self.tok.encode(self.prompt_text(prompt_messages), add_special_tokens=False)

    def encode_example(self, messages: list[dict]) -> Encoded:
        """Input ids and labels for a conversation; every assistant turn (and its end token) is supervised."""
        ids: list[int] = []
        labels: list[int] = []
        consumed = ""
        for i, m in enumerate(messages):
            if m["role"] != "assistant":
                continue
            prefix = self._render(messages[:i], True)
            if not prefix.startswith(consumed):
                raise TaskTuneError(
                    "the chat template renders earlier turns differently once later turns are added",
                    "train on single-turn rows (input/output) with this model",
                )
            seg = self.tok.encode(prefix[len(consumed) :], add_special_tokens=False)
            ans = self.tok.encode(m["content"], add_special_tokens=False) + self.end_ids
            ids += seg + ans
            labels += [IGNORE] * len(seg) + ans
            consumed = prefix + m["content"] + self.end_text
        if not ids:
            raise TaskTuneError("a training row has no assistant answer", "add an output to every training row")
        return Encoded(ids, labels)

    def decode_answer(self, ids: list[int]) -> str:
        """Generated ids → answer text, cut at the first stop token."""
        for j, t in enumerate(ids):
            if t in self.stop_ids:
                ids = ids[:j]
                break
        return self.tok.decode(ids, skip_special_tokens=True).strip()
