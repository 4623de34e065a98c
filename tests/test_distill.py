"""`tasktune distill`: a teacher given the instruction labels raw inputs; the student learns them from the bare input.

The done-when test starts a real `tasktune serve` (a tiny-model run) behind a counting proxy, labels inputs through
it with the official openai client in a real `tasktune distill` subprocess, SIGKILLs that process partway, resumes,
and checks from the proxy's log that no answered input was asked again and none was lost. A tiny fake endpoint
(this file's `FakeEndpoint`) plants 429/500 errors, invalid answers and counts requests for the other tests.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

pytest.importorskip("openai", reason="the distill endpoint tests need the test extra: pip install -e '.[test]'")

from tasktune.cli import main
from tasktune.config import TaskConfig, TrainConfig
from tasktune.distill import (
    AnswerCache,
    DistillConfig,
    agreement_scores,
    cache_key,
    distill,
    teacher_messages,
)
from tasktune.errors import ConfigError, TaskTuneError
from tasktune.train import train
from tests.tiny import make_rows, write_jsonl

INSTRUCTION = "Classify the message. Answer kind=KIND."
SCHEMA = {"type": "object", "properties": {"kind": {"type": "string"}}, "required": ["kind"]}


def _task(folder: Path, model: Path, kind: str = "text", instruction: str = INSTRUCTION) -> Path:
    out = {"kind": kind} | ({"schema": SCHEMA} if kind == "json" else {})
    text = json.dumps(
        {"name": "tiny-distill", "instruction": instruction, "output": out, "train": {"model": str(model)}}
    )
    (folder / "task.yaml").write_text(text, encoding="utf-8")  # JSON is YAML
    return folder / "task.yaml"


def _inputs(folder: Path, texts: list[str], name: str = "raw.jsonl") -> Path:
    return write_jsonl(folder / name, [{"input": t} for t in texts])


def _read(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


# --- a tiny OpenAI-compatible endpoint that plants errors and counts requests -----------------------------------------
class LocalHTTP:
    """A threaded HTTP server on a free local port; each POST goes to `self.post(handler, body_bytes)`."""

    def __init__(self):
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                outer.post(self, self.rfile.read(int(self.headers["Content-Length"])))

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        self.address = f"http://127.0.0.1:{self.httpd.server_address[1]}"

    @staticmethod
    def reply(handler: BaseHTTPRequestHandler, status: int, data: bytes, headers: dict | None = None) -> None:
        handler.send_response(status)
        for k, v in (headers or {}).items():
            handler.send_header(k, v)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(data)))
        handler.end_headers()
        handler.wfile.write(data)

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


class FakeEndpoint(LocalHTTP):
    """Answers chat completions with `answer(input)`; `plan[input]` is a list of (status, headers) to send first.
    `log` holds (input, status, time) for every request that arrived."""

    def __init__(self, answer, plan: dict | None = None):
        self.answer, self.plan, self.log = answer, {k: list(v) for k, v in (plan or {}).items()}, []
        self.lock = threading.Lock()
        super().__init__()
        self.url = self.address + "/v1"

    def post(self, handler: BaseHTTPRequestHandler, raw: bytes) -> None:
        body = json.loads(raw)
        text = body["messages"][-1]["content"]
        with self.lock:
            step = self.plan.get(text, [])
            status, headers = step.pop(0) if step else (200, {})
            self.log.append((text, status, time.monotonic(), body))
        if status != 200:
            payload = {"error": {"message": f"planted {status}", "type": "server_error"}}
        else:
            content, finish = self.answer(text)
            payload = {"id": "x", "object": "chat.completion", "created": 0, "model": body["model"],
                       "choices": [{"index": 0, "message": {"role": "assistant", "content": content},
                                    "finish_reason": finish}],
                       "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}}  # fmt: skip
        self.reply(handler, status, json.dumps(payload).encode(), headers)

    def asked(self, text: str) -> list[tuple]:
        return [e for e in self.log if e[0] == text]


@pytest.fixture
def endpoint():
    made = []

    def make(answer=lambda text: (f"kind={text.split()[0]}", "stop"), plan=None):
        made.append(FakeEndpoint(answer, plan))
        return made[-1]

    yield make
    for e in made:
        e.close()


def _cfg(url: str, **kw) -> DistillConfig:
    return DistillConfig(teacher_url=url, teacher_model="teacher", api_key_env="TASKTUNE_TEST_KEY", **kw)


# --- tests ---------------------------------------------------------------------------------------------------------
def test_retries_back_off_and_honour_retry_after_then_a_lasting_failure_is_retried_by_the_next_run(
    endpoint, tiny_model, tmp_path
):
    texts = [f"word{i} message" for i in range(6)]
    plan = {texts[0]: [(429, {"Retry-After": "0.6"}), (500, {})], texts[1]: [(503, {})] * 3}
    fake = endpoint(plan=plan)
    task, raw, out = _task(tmp_path, tiny_model), _inputs(tmp_path, texts), tmp_path / "data"
    r = distill(task, raw, out, _cfg(fake.url, max_retries=2, concurrency=3))

    first = fake.asked(texts[0])
    assert [e[1] for e in first] == [429, 500, 200]
    assert first[1][2] - first[0][2] >= 0.6  # waited the Retry-After the server sent
    assert first[2][2] - first[1][2] >= 0.5 * 0.75 * 2  # then exponential backoff (0.5 s doubling, <=25% jitter)
    assert [e[1] for e in fake.asked(texts[1])] == [503, 503, 503]  # 1 try + max_retries=2, then given up
    assert (r.asked, r.labelled, r.failed, r.retries) == (6, 5, 1, 2)
    dropped = _read(out / "dropped.jsonl")
    assert [(d["line"], d["input"]) for d in dropped] == [(2, texts[1])]
    assert "teacher request failed" in dropped[0]["reason"] and "503" in dropped[0]["reason"]

    # the failed input was never cached: the same command asks for it, and only for it
    n = len(fake.log)
    r2 = distill(task, raw, out, _cfg(fake.url, max_retries=2, concurrency=3))
    assert [e[0] for e in fake.log[n:]] == [texts[1]]
    assert (r2.asked, r2.reused, r2.labelled, r2.failed) == (1, 5, 6, 0)
    assert _read(out / "dropped.jsonl") == []


def test_invalid_answers_are_dropped_and_logged_with_file_line_and_reason(endpoint, tiny_model, tmp_path):
    answers = {
        "good one": ('{"kind": "bug"}', "stop"),
        "fenced": ('```json\n{"kind": "billing"}\n```', "stop"),
        "prose": ('Sure! {"kind": "bug"} is my answer', "stop"),
        "wrong type": ('{"kind": 5}', "stop"),
        "cut off": ('{"kind": "bu', "length"),
        "empty": ("  ", "stop"),
        "good two": ('{"kind": "account"}', "stop"),
    }
    fake = endpoint(answer=lambda text: answers[text])
    task = _task(tmp_path, tiny_model, kind="json")
    raw = _inputs(tmp_path, list(answers))
    out = tmp_path / "data"
    r = distill(task, raw, out, _cfg(fake.url, test_share=0.0, eval_share=0.0, max_tokens=5))

    reasons = {d["input"]: (d["line"], d["file"], d["reason"]) for d in _read(out / "dropped.jsonl")}
    assert set(reasons) == {"prose", "wrong type", "cut off", "empty"}
    assert reasons["prose"][:2] == (3, str(raw)) and reasons["prose"][2].startswith("not valid JSON")
    assert reasons["wrong type"][2].startswith("breaks the schema: kind: 5 is not of type 'string'")
    assert reasons["cut off"][2] == "cut off at max_tokens=5: raise --max-tokens"
    assert reasons["empty"][2] == "empty answer"
    train_rows = _read(out / "train.jsonl")
    assert {row["input"]: row["output"] for row in train_rows} == {
        "good one": {"kind": "bug"}, "fenced": {"kind": "billing"}, "good two": {"kind": "account"}}  # fmt: skip
    assert (r.labelled, r.dropped, r.failed) == (3, 4, 0)
    # the labelled set is a task of its own: bare-input training, instruction kept, schema inline; checked by the doctor
    from tasktune.config import load_task

    student = load_task(out / "task.yaml")
    assert student.instruction == INSTRUCTION and not student.train_with_instruction
    assert student.json_schema() == SCHEMA and student.data.train == "train.jsonl" and student.data.test is None
    check = json.loads((out / "check.json").read_text())
    assert check["splits"]["train"]["rows"] == 3 and "too-few-rows" in {f["code"] for f in check["findings"]}
    # the teacher got the instruction as the system turn, then the input
    assert fake.log[0][3]["messages"] == [{"role": "system", "content": INSTRUCTION},
                                          {"role": "user", "content": fake.log[0][0]}]  # fmt: skip


def test_cache_key_follows_teacher_prompt_and_settings_and_a_changed_instruction_asks_again(
    endpoint, tiny_model, tmp_path
):
    m = teacher_messages(INSTRUCTION, [{"role": "user", "content": "x"}])
    s = {"max_tokens": 8, "temperature": 0.0}
    k = cache_key("t", m, s)
    assert k == cache_key("t", teacher_messages(INSTRUCTION, [{"role": "user", "content": "x"}]), dict(s))
    assert k != cache_key("t2", m, s)
    assert k != cache_key("t", teacher_messages(INSTRUCTION + " ", [{"role": "user", "content": "x"}]), s)
    assert k != cache_key("t", teacher_messages(INSTRUCTION, [{"role": "user", "content": "y"}]), s)
    assert k != cache_key("t", m, s | {"max_tokens": 9})

    fake = endpoint()
    texts = [f"w{i} msg" for i in range(5)]
    raw, out = _inputs(tmp_path, [*texts, texts[0]]), tmp_path / "data"  # the last line repeats the first
    first = distill(_task(tmp_path, tiny_model), raw, out, _cfg(fake.url))
    assert len(fake.log) == 5 and first.labelled == 6  # a repeated input is asked once and labels both lines
    again = distill(_task(tmp_path, tiny_model), raw, out, _cfg(fake.url))
    assert len(fake.log) == 5 and again.reused == 6  # same prompts: nothing asked
    changed = distill(_task(tmp_path, tiny_model, instruction="Another rule."), raw, out, _cfg(fake.url))
    assert len(fake.log) == 10 and changed.reused == 0  # another instruction: every input asked again
    assert sorted(e[0] for e in fake.log[5:]) == texts
    longer = distill(_task(tmp_path, tiny_model), raw, out, _cfg(fake.url, max_tokens=300))
    assert longer.asked == 5  # other generation settings: asked again too


def test_a_half_written_last_cache_line_is_cut_off_and_asked_again(tmp_path):
    path = tmp_path / "cache.jsonl"
    path.write_text('{"key": "a", "text": "x"}\n{"key": "b", "te', encoding="utf-8")
    cache = AnswerCache(path)
    assert cache.get("a") is not None and cache.get("b") is None
    cache.add({"key": "c", "text": "y"})
    cache.close()
    assert [json.loads(line)["key"] for line in path.read_text().splitlines()] == ["a", "c"]


def test_agreement_scores_exact_and_field_level():
    teacher = ['{"kind": "bug", "urgent": true}', '{"kind": "billing", "urgent": false}']
    same = agreement_scores(teacher, teacher, "json")
    assert same["exact_agreement"] == 1.0 and same["field_agreement"] == 1.0
    one_field = agreement_scores(['{"kind": "bug", "urgent": false}', "not json"], teacher, "json")
    assert one_field["exact_agreement"] == 0.0 and one_field["field_agreement"] == 0.25
    assert one_field["student_valid_rate"] == 0.5
    text = agreement_scores(["kind=bug", "kind=other thing"], ["Kind=bug ", "kind=billing"], "text")
    assert text["exact_agreement"] == 0.5 and 0.5 < text["rouge_l_agreement"] < 1.0


def test_cli_errors_are_one_line_with_the_fix(tiny_model, tmp_path, capsys):
    task, raw = _task(tmp_path, tiny_model), _inputs(tmp_path, ["a b"])
    assert main(["distill", "--task", str(task), "--inputs", str(raw), "--out", str(tmp_path / "d")]) == 2
    assert "exactly one teacher" in capsys.readouterr().err
    assert main(["distill", "--task", str(task), "--inputs", str(raw), "--out", str(tmp_path / "d"),
                 "--teacher-url", "http://127.0.0.1:9/v1"]) == 2  # fmt: skip
    assert "--teacher-model" in capsys.readouterr().err
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    assert main(["distill", "--task", str(task), "--inputs", str(raw), "--out", str(tmp_path / "busy"),
                 "--teacher", str(tiny_model)]) == 2  # fmt: skip
    assert "not empty" in capsys.readouterr().err
    assert (tmp_path / "busy" / "notes.txt").read_text() == "mine"


# --- a real teacher: a tiny run, served for real and used locally ----------------------------------------------------
@pytest.fixture(scope="module")
def teacher_run(tiny_model, tmp_path_factory) -> Path:
    """A tiny run that, given INSTRUCTION as the system turn, answers `kind=...` and stops: a teacher whose
    answers are valid text. (Trained on that conversation, so served or local, it is prompted as it was trained.)"""
    root = tmp_path_factory.mktemp("distill-teacher")
    rows = [{"messages": [{"role": "system", "content": INSTRUCTION}, {"role": "user", "content": r["input"]},
                          {"role": "assistant", "content": "kind=" + r["output"]["kind"]}]}
            for r in make_rows(64, seed=1)]  # fmt: skip
    write_jsonl(root / "kv.jsonl", rows)
    task = TaskConfig(name="kv", output={"kind": "text"}, data={"train": str(root / "kv.jsonl")})
    # full fine-tuning: LoRA on the 32-wide tiny model never learns to stop (it repeats the label to max_tokens)
    cfg = TrainConfig(model=str(tiny_model), method="full", max_steps=120, batch_size=8, learning_rate=3e-3,
                      precision="fp32", eval_split=0.1)  # fmt: skip
    train(task, cfg, root / "teacher")
    return root / "teacher"


class CountingProxy(LocalHTTP):
    """Forwards every request to the real server, slowly (so a kill lands partway), and logs each input asked and
    whether its answer went back to the client."""

    def __init__(self, target: str, delay: float):
        self.target, self.delay, self.log = target, delay, []
        self.lock = threading.Lock()
        super().__init__()
        self.url = self.address

    def post(self, handler: BaseHTTPRequestHandler, data: bytes) -> None:
        entry = {"input": json.loads(data)["messages"][-1]["content"], "delivered": False}
        with self.lock:
            self.log.append(entry)
        time.sleep(self.delay)
        headers = {k: v for k, v in handler.headers.items() if k.lower() in ("authorization", "content-type")}
        req = urllib.request.Request(self.target + handler.path, data=data, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(req, timeout=120) as r:
                status, body = r.status, r.read()
        except urllib.error.HTTPError as e:
            status, body = e.code, e.read()
        try:
            self.reply(handler, status, body)
            handler.wfile.flush()
            entry["delivered"] = True
        except OSError:  # the client was killed while we waited
            pass


def test_labelling_through_a_real_server_survives_sigkill_without_asking_twice_or_losing_inputs(
    teacher_run, tiny_model, tmp_path
):
    from tests.test_serve import Server

    key = "distill-key-42"
    server = Server([str(teacher_run), "--api-key", key])
    proxy = CountingProxy(server.url, delay=0.15)
    try:
        texts = [f"{r['input']} #{i}" for i, r in enumerate(make_rows(30, seed=5))]
        task, raw, out = _task(tmp_path, tiny_model), _inputs(tmp_path, texts), tmp_path / "data"
        import tasktune

        src = os.pathsep.join([str(Path(tasktune.__file__).parents[1]), os.environ.get("PYTHONPATH", "")])
        env = dict(os.environ, DISTILL_TEST_KEY=key, TASKTUNE_NO_PROGRESS="1", PYTHONPATH=src)
        env.pop("OPENAI_API_KEY", None)
        cmd = [sys.executable, "-m", "tasktune", "distill", "--task", str(task), "--inputs", str(raw), "--out",
               str(out), "--teacher-url", proxy.url + "/v1", "--teacher-model", teacher_run.name,
               "--api-key-env", "DISTILL_TEST_KEY", "--concurrency", "2", "--max-tokens", "24"]  # fmt: skip
        first = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        cache = out / "cache.jsonl"
        deadline = time.time() + 120
        while time.time() < deadline and first.poll() is None:
            if cache.is_file() and cache.read_text().count("\n") >= 10:
                first.send_signal(signal.SIGKILL)
                break
            time.sleep(0.02)
        first.wait(30)
        assert first.returncode == -signal.SIGKILL, f"not killed partway:\n{first.stdout.read()}"
        time.sleep(0.5)  # let requests in flight at the kill reach the proxy's log
        run1 = list(proxy.log)
        cached_lines = {json.loads(line)["line"] for line in cache.read_text().splitlines()}
        cached = {texts[n - 1] for n in cached_lines}
        assert 10 <= len(cached) < len(texts)
        assert cached <= {e["input"] for e in run1 if e["delivered"]}  # an answer is cached only once received

        second = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
        assert second.returncode == 0, second.stdout + second.stderr
        run2 = [e["input"] for e in proxy.log[len(run1) :]]
        assert len(run2) == len(set(run2))  # nothing asked twice within the resumed run
        assert set(run2) == set(texts) - cached  # exactly the inputs without a cached answer...
        assert not set(run2) & cached  # ...so no answered input is asked again
        # the only inputs asked in both runs are those in flight at the kill (their answers never reached the cache)
        in_flight = {e["input"] for e in run1} - cached
        assert set(run2) & {e["input"] for e in run1} == in_flight and len(in_flight) <= 2
        assert all(e["delivered"] for e in proxy.log[len(run1) :])

        summary = json.loads((out / "distill.json").read_text())
        assert summary["reused"] == len(cached) and summary["asked"] == len(run2)
        labelled = [row["input"] for split in ("train", "eval", "test") for row in _read(out / f"{split}.jsonl")]
        dropped = [d["input"] for d in _read(out / "dropped.jsonl")]
        assert sorted(labelled + dropped) == sorted(texts)  # none lost, none doubled
        assert summary["labelled"] == len(labelled) >= len(texts) // 2
        assert all(row["output"].startswith("kind=") for row in _read(out / "train.jsonl")[:5])
    finally:
        proxy.close()
        server.stop()


def test_local_teacher_student_training_and_agreement_report(teacher_run, tiny_model, tmp_path, capsys):
    rows = make_rows(40, seed=11)
    raw = write_jsonl(tmp_path / "raw.jsonl", [{"input": r["input"], "output": "kind=" + r["output"]["kind"]}
                                               for r in rows])  # fmt: skip
    task, out = _task(tmp_path, tiny_model), tmp_path / "data"
    assert main(["distill", "--task", str(task), "--inputs", str(raw), "--out", str(out), "--teacher",
                 str(teacher_run), "--concurrency", "16", "--max-tokens", "24", "--test-share", "0.25",
                 "--precision", "fp32", "--price-per-1k-prompt-tokens", "0.5"]) == 0  # fmt: skip
    printed = capsys.readouterr().out
    summary = json.loads((out / "distill.json").read_text())
    assert summary["teacher"].startswith("run:") and summary["asked"] == 40
    assert summary["cost_usd"] == pytest.approx(summary["prompt_tokens"] * 0.5 / 1000) and summary["cost_usd"] > 0
    assert "labelled by run:" in printed and "tasktune train --task" in printed
    test_rows = _read(out / "test.jsonl")
    assert test_rows and all(row["reference"].startswith("kind=") for row in test_rows)  # the input's own answer kept

    run = tmp_path / "student"
    assert main(["train", "--task", str(out / "task.yaml"), "--out", str(run), "--max-steps", "4", "--batch-size",
                 "8", "--precision", "fp32", "--no-diagnose", "--force"]) == 0  # fmt: skip
    capsys.readouterr()
    report_path = tmp_path / "agreement.json"
    assert main(["eval", str(run), "--agreement-with", str(out), "--json", str(report_path), "--precision",
                 "fp32"]) == 0  # fmt: skip
    printed = capsys.readouterr().out
    report = json.loads(report_path.read_text())
    assert report["n"] == len(test_rows) and report["references"] == len(test_rows)
    assert "exact agreement" in printed and "ROUGE-L agreement" in printed
    # prompt tokens in the student's tokenizer: bare (with the template's default system turn, which this short
    # instruction replaces: here the "saving" is negative) against the teacher's instructed prompt
    from transformers import AutoTokenizer

    from tasktune.render import ChatFormat

    fmt = ChatFormat(AutoTokenizer.from_pretrained(tiny_model))
    users = [[{"role": "user", "content": row["input"]}] for row in test_rows]
    bare = sum(len(fmt.encode_prompt(m)) for m in users) / len(users)
    told = sum(len(fmt.encode_prompt(fmt.with_instruction(m, INSTRUCTION))) for m in users) / len(users)
    assert (report["student_prompt_tokens"], report["instructed_prompt_tokens"]) == (bare, told)
    assert report["prompt_token_saving"] == pytest.approx(1 - bare / told)
    assert [e["teacher"] for e in report["examples"]] == [row["output"] for row in test_rows]
    assert set(report["teacher_metrics_vs_reference"]) >= {"exact_match", "rouge_l", "chrf"}


def test_answer_pattern_drops_text_answers_that_miss_the_rule(endpoint, tiny_model, tmp_path):
    fake = endpoint(
        answer=lambda text: ("Ahoy matey! " + text if "pirate" in text else "Dear customer, " + text, "stop")
    )
    texts = ["pirate one", "clerk one", "pirate two", "clerk two"]
    raw, out = _inputs(tmp_path, texts), tmp_path / "data"
    cfg = _cfg(fake.url, answer_pattern=r"(?i)\bahoy\b", test_share=0.0, eval_share=0.0)
    r = distill(_task(tmp_path, tiny_model), raw, out, cfg)
    assert sorted(row["input"] for row in _read(out / "train.jsonl")) == ["pirate one", "pirate two"]
    why = "does not match --answer-pattern '(?i)\\\\bahoy\\\\b'"
    assert [(d["line"], d["reason"]) for d in _read(out / "dropped.jsonl")] == [(2, why), (4, why)]
    assert (r.labelled, r.dropped) == (2, 2)
    with pytest.raises(ConfigError, match="checks text answers"):
        distill(_task(tmp_path, tiny_model, kind="json"), raw, tmp_path / "d2", cfg)
    with pytest.raises(ConfigError, match="answer_pattern"):
        _cfg(fake.url, answer_pattern="(unclosed").check()


def test_pirate_support_example_is_deterministic_and_its_rule_tells_a_pirate_from_a_clerk(tmp_path):
    from tasktune.config import load_task
    from tasktune.examples.pirate_support import INSTRUCTION, follows_rule

    assert main(["example", "pirate-support", "--out", str(tmp_path / "a"), "--n", "60"]) == 0
    assert main(["example", "pirate-support", "--out", str(tmp_path / "b"), "--n", "60"]) == 0
    for name in ("raw.jsonl", "held_out.jsonl", "task.yaml"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    raw = [r["input"] for r in _read(tmp_path / "a" / "raw.jsonl")]
    held = [r["input"] for r in _read(tmp_path / "a" / "held_out.jsonl")]
    assert len(raw) == 60 and len(held) == 48 and len(set(raw + held)) == 108  # distinct, never both
    task = load_task(tmp_path / "a" / "task.yaml")
    assert task.instruction == INSTRUCTION and task.output.kind == "text"
    assert follows_rule("Ahoy, matey! Ye can find the export in the menu.")
    assert follows_rule("Arrgh, that be a fine question.")
    assert not follows_rule("To export your notes, open the menu and choose PDF. Shipping is free.")


def test_a_refused_key_or_an_unreachable_endpoint_stops_the_run_with_the_fix(endpoint, tiny_model, tmp_path):
    fake = endpoint(plan={"w0 msg": [(401, {})]})
    task, raw = _task(tmp_path, tiny_model), _inputs(tmp_path, ["w0 msg", "w1 msg"])
    with pytest.raises(TaskTuneError, match="refused the API key") as e:
        distill(task, raw, tmp_path / "d", _cfg(fake.url, concurrency=1))
    assert "$TASKTUNE_TEST_KEY" in e.value.hint
    fake.close()
    with pytest.raises(TaskTuneError, match="cannot reach the teacher") as e:
        distill(task, raw, tmp_path / "d", _cfg(fake.url, max_retries=0))
    assert "resumes" in e.value.hint
