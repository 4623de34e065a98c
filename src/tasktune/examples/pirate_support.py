"""Pirate support: raw customer messages and an instruction to distil (`tasktune distill`), no labels needed.

The instruction sets a persona that SmolLM2-135M-Instruct takes on only when told: answer as a pirate, starting with
"Ahoy matey!". Whether an answer follows it is checked automatically (`RULE`: pirate words), so the base model
without the instruction, with it, and the distilled student on the bare message can be compared by one number.

    tasktune example pirate-support --out DIR --n 300     # DIR/raw.jsonl, DIR/held_out.jsonl, DIR/task.yaml
"""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

from tasktune.examples.kit import register, unique_rows

INSTRUCTION = "You are a pirate. Start every reply with 'Ahoy matey!'. Keep your reply short."
# An answer follows the persona when it speaks like a pirate: one of these words (case-insensitive, whole words).
RULE = r"(?i)\b(ahoy|matey|aye|arr+g?h?|pirate|captain|ye|me hearties|ship|seas?|sail\w*|treasure|booty)\b"

TASK_YAML = """\
name: pirate-support
instruction: {instruction}
output:
  kind: text
train:
  method: lora
  epochs: 2
  batch_size: 8
  max_length: 512
"""

FEATURES = ["the editor", "sync", "search", "the export to PDF", "notifications", "the dark mode", "tags",
            "the mobile app", "shared notebooks", "the web clipper", "reminders", "offline mode", "the calendar view",
            "templates", "attachments", "the trash folder", "two-factor login", "the desktop app"]  # fmt: skip
QUESTIONS = [
    "How do I use {f}?", "Where can I find {f}?", "Is {f} available on the free plan?", "Why is {f} so slow today?",
    "Can you explain how {f} works?", "{F} stopped working after the update.", "I love {f}, great job!",
    "{F} keeps crashing on my phone.", "Can I turn off {f}?", "Does {f} work without internet?",
    "What's new in {f}?", "My team can't get {f} to work.", "Is there a shortcut for {f}?",
    "{F} is confusing, any tips?", "How do I reset {f} to the defaults?",
]  # fmt: skip
GENERAL = [
    "I was charged twice this month, please refund me.", "How do I change my email address?",
    "Can I get a discount for students?", "How do I delete my account?", "Do you have a Linux version?",
    "What's the best way to organise recipes?", "Tell me a fun fact about octopuses.",
    "What should I cook for dinner tonight?", "Can you recommend a good book?", "How do I make my notes load faster?",
    "Thanks, the support team fixed my problem in minutes!", "Why is my invoice higher than last month?",
    "Is my data encrypted?", "Can I import notes from another app?", "How many devices can I use?",
    "What is the capital of France?", "How do I write a good to-do list?", "Give me a tip for staying focused.",
]  # fmt: skip
OPENERS = ["", "", "", "Hi! ", "Hello, ", "Quick question: ", "Hey there. ", "Good morning! "]


def generate_messages(n: int, seed: int) -> list[str]:
    """n distinct customer messages (or every distinct one there is, if fewer)."""
    rng = random.Random(seed)
    pool = [q.format(f=f, F=f[0].upper() + f[1:]) for q in QUESTIONS for f in FEATURES] + GENERAL
    rows = unique_rows(lambda _: {"input": rng.choice(OPENERS) + rng.choice(pool)}, n, max_tries=20)
    return [r["input"] for r in rows]


def follows_rule(answer: str) -> bool:
    return re.search(RULE, answer) is not None


@register("pirate-support")
def write_pirate_support(out: str | Path, n: int = 300, seed: int = 0, n_held_out: int = 48) -> Path:
    """Write raw.jsonl (n messages to distil), held_out.jsonl (messages distillation never sees) and task.yaml."""
    from tasktune.fsio import atomic_write_text, ensure_writable_dir, write_jsonl

    out = ensure_writable_dir(out, what="example folder")
    messages = generate_messages(n + n_held_out, seed)
    write_jsonl(out / "raw.jsonl", [{"input": m} for m in messages[:n]])
    write_jsonl(out / "held_out.jsonl", [{"input": m} for m in messages[n:]])
    atomic_write_text(out / "task.yaml", TASK_YAML.format(instruction=json.dumps(INSTRUCTION)))
    return out
