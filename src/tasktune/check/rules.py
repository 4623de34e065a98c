"""The data check's catalogue: every finding code with its severity, title and remedy, and the row minimums."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Rule:
    severity: str
    title: str
    remedy: str
    drops: bool = False  # `--fix` drops the rows this finding locates


FIX = "; `tasktune check --fix OUT` drops it"
RULES: dict[str, Rule] = {
    # format: rows that cannot be trained on at all
    "unreadable-line": Rule("error", "lines that are not valid JSON", "repair or delete the line" + FIX, True),
    "non-utf8": Rule("error", "bytes that are not UTF-8", "re-save the file as UTF-8 (e.g. `iconv -f latin1 -t utf-8`)"
                     + FIX, True),
    "wrong-type": Rule("error", "fields of the wrong type", "rows are JSON objects; input/output are strings (a JSON "
                       "output may be an object); messages are lists of {role, content} strings" + FIX, True),
    "missing-field": Rule("error", "rows without an input", 'give each row "input" and "output" (or "messages", or '
                          '"prompt" and "completion")' + FIX, True),
    "missing-answer": Rule("error", "rows without an answer", 'add the expected answer as "output" (or "completion")'
                           + FIX, True),
    "empty-field": Rule("error", "empty inputs or answers", "fill in the field or delete the row" + FIX, True),
    "unknown-role": Rule("error", "messages with an unknown role", "use the roles system, user and assistant" + FIX,
                         True),
    "no-assistant-turn": Rule("error", "conversations without a final assistant turn", "end each conversation with "
                              "the assistant message the model should learn" + FIX, True),
    "no-user-turn": Rule("error", "conversations without a user turn", "add the user message that the answer "
                         "responds to" + FIX, True),
    "empty-split": Rule("error", "a split without a usable row", "add rows, one JSON object per line"),
    # labels
    "invalid-json-answer": Rule("error", "answers that are not valid JSON (the task's output.kind is json)",
                                "fix the answer's JSON (or set output.kind: text)" + FIX, True),
    "schema-violation": Rule("error", "answers that break the task's JSON schema", "correct the field named by the "
                             "JSON path, or widen the schema if the value is right" + FIX, True),
    "conflicting-answers": Rule("warning", "the same input with different answers", "decide which answer is right and "
                                "correct the others: contradictory labels teach noise; --fix drops every row of a "
                                "conflicting input", True),
    "skewed-labels": Rule("warning", "a categorical field dominated by one value", "add rows with the rare values (or "
                          "down-sample the common one): a model that always answers the majority value scores well "
                          "on this data and learns little else"),
    "label-distribution": Rule("info", "distribution of categorical answer fields", "compare with the distribution "
                               "you expect in production"),
    "inferred-schema": Rule("info", "the JSON Schema the training answers follow (the task has none)", "answers are "
                            "decoded under it; `--fix OUT` writes it as OUT/schema.json for you to edit, and OUT/"
                            "task.yaml points at it"),
    "copy-fields": Rule("info", "string fields whose values are copied from the input", "set output.copy_fields to "
                        "these paths in the task file: decoding then writes only spans of the request's input there, "
                        "so a misspelt or invented value cannot come out"),
    # duplicates and leakage
    "duplicate-exact": Rule("warning", "rows that repeat an earlier row", "delete the repeats: each copy adds weight "
                            "to one case; --fix keeps the first", True),
    "duplicate-near": Rule("warning", "rows nearly identical to an earlier row", "delete or vary them; --fix keeps "
                           "the first", True),
    "leak-exact": Rule("error", "held-out rows whose input is also in train", "remove those rows from train (the "
                       "held-out split stays as it is): a model scored on inputs it trained on looks better than it "
                       "is; --fix drops the train copies"),
    "leak-near": Rule("warning", "held-out rows nearly identical to a train row", "remove the near copies from train; "
                      "--fix drops them"),
    # lengths
    "too-long": Rule("warning", "rows longer than max_length", "tasktune train skips these rows (cutting one would cut "
                     "its answer and its EOS); raise --max-length or shorten the inputs"),
    "lengths": Rule("info", "token lengths (model's tokenizer)", "choose --max-length above the longest row you "
                    "want to keep"),
    # template safety
    "control-token": Rule("error", "chat-template control tokens inside content", "remove or escape the token text "
                          "(e.g. write `< |im_start| >`): inside content it is read as a real control token and "
                          "breaks the turn structure" + FIX, True),
    "special-token": Rule("warning", "the tokenizer's special tokens inside content", "remove the token text unless "
                          "the model should see that special token there"),
    "early-eos": Rule("error", "answers containing the stop token before their end", "remove the stop-token text "
                      "from the answer: the model learns to stop there and every later token is lost" + FIX, True),
    "template-mismatch": Rule("error", "rows the chat template renders differently from the training encoding",
                              "keep answers free of what the template rewrites (e.g. leading/trailing whitespace it "
                              "trims), or use single-turn rows" + FIX, True),
    "eos-mismatch": Rule("warning", "answers end with a token that is not the model's EOS", "tasktune stops on both; "
                         "other runtimes stop only at EOS: set the EOS (generation_config.eos_token_id) to the "
                         "end-of-turn token when you export"),
    # size
    "too-few-rows": Rule("warning", "too few training rows for the method", "add rows (or use --method lora)"),
    "eval-too-small": Rule("warning", "held-out split too small to measure the difference you need", "add held-out "
                           "rows (the arithmetic is in the message)"),
    "eval-size": Rule("info", "what the held-out split can measure", "-"),
    # privacy (regex scans; see pii.py)
    "pii-email": Rule("warning", "e-mail addresses", "remove or pseudonymise them (a model can repeat training text)"),
    "pii-phone": Rule("warning", "phone numbers", "remove or pseudonymise them (a model can repeat training text)"),
    "pii-api-key": Rule("warning", "API keys or secrets", "remove them and revoke the keys: anything in training "
                        "data can come back out of the model"),
    "pii-card": Rule("warning", "payment card numbers (Luhn-valid)", "remove them: card numbers must not be stored "
                     "in training data (PCI DSS)"),
}  # fmt: skip

# Rows a method needs before a fine-tune is more than noise. LoRA: OpenAI's fine-tuning guide sees clear gains from
# 50-100 examples. Full: every weight moves, so a few hundred rows are memorised and general ability is lost.
MIN_ROWS = {"lora": 50, "full": 500}
