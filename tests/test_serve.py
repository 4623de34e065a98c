"""`tasktune serve` started for real (a subprocess on a free loopback port), spoken to with the official `openai`
client.

Two LoRA runs on one tiny base learn two answer formats: JSON (`{"kind": ...}`) and `kind=...`. Every answer the
server gives is compared with what `Predictor` gives for the same run and input, so an adapter that leaks into
another run's request, or a prompt built differently from training, fails here.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

openai = pytest.importorskip("openai", reason="the serve tests need the test extra: pip install -e '.[test]'")

from tasktune.config import TaskConfig, TrainConfig  # noqa: E402
from tasktune.data import examples_from_inputs  # noqa: E402
from tasktune.predict import Predictor  # noqa: E402
from tasktune.train import train  # noqa: E402
from tests import servers  # noqa: E402
from tests.tiny import greedy_reference, make_rows, scramble_weights, write_jsonl  # noqa: E402

KEY = "test-key-123"
INPUTS = [r["input"] for r in make_rows(6, seed=9)]


@pytest.fixture(scope="module")
def runs(tiny_model, tmp_path_factory) -> dict[str, Path]:
    """Two LoRA runs of the same tiny base with different output formats."""
    root = tmp_path_factory.mktemp("serve-runs")
    rows = make_rows(64, seed=1)
    write_jsonl(root / "json.jsonl", rows)
    write_jsonl(root / "kv.jsonl", [{"input": r["input"], "output": "kind=" + r["output"]["kind"]} for r in rows])
    out = {}
    for name, kind in (("json", "json"), ("kv", "text")):
        task = TaskConfig(name=name, output={"kind": kind}, data={"train": str(root / f"{name}.jsonl")})
        cfg = TrainConfig(model=str(tiny_model), method="lora", max_steps=40, batch_size=8, learning_rate=2e-2,
                          precision="fp32", eval_split=0.1, lora={"r": 8, "alpha": 16}, recipe="off")  # fmt: skip
        out[name] = root / f"fmt-{name}"
        train(task, cfg, out[name])
    return out


@pytest.fixture(scope="module")
def expected(runs) -> dict[str, list]:
    """What `tasktune predict` answers for each run (fp32, the adapter unmerged as the server runs it)."""
    return {n: Predictor.from_run(path, precision="fp32", merge=False).predict(INPUTS) for n, path in runs.items()}


class Server:
    def __init__(self, args: list[str]):
        import tasktune

        env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(Path(tasktune.__file__).parents[1]),
                                                           os.environ.get("PYTHONPATH", "")]))  # fmt: skip
        cmd = [sys.executable, "-m", "tasktune", "serve", *args, "--port", "0", "--precision", "fp32"]
        self.proc, self.url, self.lines = servers.start(cmd, env, timeout=180)
        if self.url is None:
            self.stop()
            raise AssertionError("server did not start:\n" + "".join(self.lines))
        deadline = time.time() + 60
        while time.time() < deadline:
            try:
                with urllib.request.urlopen(self.url + "/health", timeout=5) as r:
                    if r.status == 200:
                        return
            except OSError:
                time.sleep(0.2)
        raise AssertionError("server never answered /health:\n" + "".join(self.lines))

    def client(self, key: str | None = KEY):
        return openai.OpenAI(base_url=self.url + "/v1", api_key=key or "none", max_retries=0, timeout=120)

    def raw(self, method: str, path: str, body: bytes | None = None, headers: dict | None = None):
        """(status, parsed JSON body) for a request the openai client cannot make (no key, broken JSON)."""
        req = urllib.request.Request(self.url + path, data=body, method=method, headers=headers or {})
        try:
            with urllib.request.urlopen(req, timeout=60) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read())

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()


@pytest.fixture(scope="module")
def server(runs):
    s = Server([str(runs["json"]), str(runs["kv"]), "--api-key", KEY, "--alias", f"triage={runs['kv']}"])
    yield s
    s.stop()


def _chat(client, model: str, text: str, **kw):
    return client.chat.completions.create(model=model, messages=[{"role": "user", "content": text}], **kw)


def test_models_lists_runs_alias_and_shared_base(server, tiny_model):
    models = {m.id: m for m in server.client().models.list().data}
    assert set(models) == {"fmt-json", "fmt-kv", "triage", tiny_model.name}
    assert models[tiny_model.name].model_extra["method"] == "base"
    assert models["fmt-json"].model_extra["parent"] == tiny_model.name


def test_interleaved_runs_answer_in_their_own_format_as_predict_does(server, expected):
    client = server.client()
    for i, text in enumerate(INPUTS):
        for name in ("json", "kv") if i % 2 else ("kv", "json"):  # interleave which adapter goes first
            r = _chat(client, f"fmt-{name}", text)
            want = expected[name][i]
            assert r.choices[0].message.content == want.output, (name, text)
            assert r.usage.prompt_tokens == want.prompt_tokens
            assert r.usage.completion_tokens == want.generated_tokens
            assert r.choices[0].finish_reason == ("stop" if want.stopped else "length")
    # the two formats really differ (else this test could not see a leaked adapter)
    assert all(p.output.startswith('{"kind"') for p in expected["json"])
    assert all(p.output.startswith("kind=") for p in expected["kv"])
    assert _chat(client, "triage", INPUTS[0]).choices[0].message.content == expected["kv"][0].output


def test_streaming_sends_the_answer_in_pieces_that_add_up(server, expected):
    stream = _chat(server.client(), "fmt-kv", INPUTS[1], stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    pieces = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert len(pieces) > 2
    assert "".join(pieces) == expected["kv"][1].output
    finish = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finish == ["stop" if expected["kv"][1].stopped else "length"]
    assert chunks[-1].usage.completion_tokens == expected["kv"][1].generated_tokens


def test_completions_take_the_bare_input_for_runs_and_raw_text_for_the_base(server, expected, tiny_model):
    client = server.client()
    r = client.completions.create(model="fmt-json", prompt=[INPUTS[2], INPUTS[3]])
    assert [c.text for c in r.choices] == [expected["json"][2].output, expected["json"][3].output]
    assert r.usage.prompt_tokens == expected["json"][2].prompt_tokens + expected["json"][3].prompt_tokens
    base = client.completions.create(model=tiny_model.name, prompt="the app crashes", max_tokens=5)
    assert base.usage.completion_tokens == 5 and base.choices[0].finish_reason == "length"
    assert base.usage.prompt_tokens < expected["json"][0].prompt_tokens  # no chat template around it
    streamed = client.completions.create(model="fmt-kv", prompt=INPUTS[4], stream=True)
    assert "".join(c.choices[0].text for c in streamed if c.choices) == expected["kv"][4].output


def test_sampling_settings_are_honoured(server, expected, tiny_model):
    client = server.client()
    base = tiny_model.name
    sampled = [
        _chat(client, base, "hello", temperature=1.0, seed=s, max_tokens=20).choices[0].message.content
        for s in (7, 7, 8)
    ]
    assert sampled[0] == sampled[1]  # same seed, same answer
    assert sampled[0] != sampled[2]  # another seed: another draw (20 tokens from a random model)
    greedy = _chat(client, base, "hello", max_tokens=20).choices[0].message.content
    nucleus = _chat(client, base, "hello", temperature=1.0, top_p=1e-6, seed=3, max_tokens=20)
    assert nucleus.choices[0].message.content == greedy  # top_p this small keeps only the top token
    short = _chat(client, "fmt-kv", INPUTS[0], max_tokens=2)
    assert short.usage.completion_tokens == 2 and short.choices[0].finish_reason == "length"
    assert expected["kv"][0].output.startswith(short.choices[0].message.content)
    cut = _chat(client, "fmt-kv", INPUTS[0], stop=["="])
    assert cut.choices[0].message.content == "kind" and cut.choices[0].finish_reason == "stop"
    streamed = _chat(client, "fmt-kv", INPUTS[0], stop="=", stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in streamed if c.choices) == "kind"


def test_concurrent_clients_get_their_own_answers(server, expected):
    jobs = [(name, i) for i in range(len(INPUTS)) for name in ("json", "kv")] * 3  # 36 requests
    before = server.raw("GET", "/health")[1]["batches"]

    def ask(job):
        name, i = job
        return _chat(server.client(), f"fmt-{name}", INPUTS[i]).choices[0].message.content

    with ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(ask, jobs))
    wrong = [(job, a) for job, a in zip(jobs, answers, strict=True) if a != expected[job[0]][job[1]].output]
    assert not wrong
    batches = server.raw("GET", "/health")[1]["batches"] - before
    assert batches < len(jobs)  # requests shared batches


def test_bad_requests_get_openai_errors_and_the_server_survives(server, expected, tiny_model):
    client = server.client()
    with pytest.raises(openai.AuthenticationError):
        server.client(key="wrong").models.list()
    status, body = server.raw("GET", "/v1/models")
    assert status == 401 and body["error"]["type"] == "authentication_error"
    status, body = server.raw("POST", "/v1/chat/completions", b"{}", {"Content-Type": "application/json"})
    assert status == 401  # the key is checked before the body
    assert server.raw("GET", "/health")[0] == 200  # /health needs no key

    with pytest.raises(openai.NotFoundError) as e:
        _chat(client, "no-such-run", "hi")
    assert "fmt-json" in e.value.message  # names what is served
    for bad in ({"messages": []}, {"temperature": 5}, {"n": 2}, {"max_tokens": 0}):
        kwargs = {"messages": [{"role": "user", "content": "hi"}]} | bad
        with pytest.raises(openai.BadRequestError) as e:
            client.chat.completions.create(model="fmt-json", **kwargs)
        assert e.value.body["param"] in ("messages", "temperature", "n", "max_tokens"), e.value.body
    auth = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
    status, body = server.raw("POST", "/v1/chat/completions", b'{"model": "fmt-json", "messages": [', auth)
    assert status == 400 and "not valid JSON" in body["error"]["message"]
    status, body = server.raw("POST", "/v1/chat/completions", b"[1, 2]", auth)
    assert status == 400 and "JSON object" in body["error"]["message"]
    with pytest.raises(openai.BadRequestError, match="the prompt is empty"):
        client.completions.create(model=tiny_model.name, prompt="")

    with pytest.raises(openai.APIStatusError) as e:
        _chat(client, "fmt-json", "hi", max_tokens=100_000)
    assert e.value.status_code == 413 and e.value.body["code"] == "context_length_exceeded"
    with pytest.raises(openai.APIStatusError) as e:
        _chat(client, "fmt-json", "crashes " * 1000)  # the prompt alone is longer than the tiny model's 512
    assert e.value.status_code == 413

    assert _chat(client, "fmt-json", INPUTS[0]).choices[0].message.content == expected["json"][0].output


def test_a_full_queue_answers_503_and_recovers(runs, tiny_model):
    s = Server([str(runs["json"]), "--max-queue", "1", "--max-batch-size", "1"])
    try:
        client = s.client()

        def ask(_):
            try:
                client.completions.create(model=tiny_model.name, prompt="hello", max_tokens=300)
                return 200
            except openai.APIStatusError as e:
                assert e.body["code"] == "queue_full" and e.response.headers.get("retry-after") == "1"
                return e.status_code

        with ThreadPoolExecutor(12) as pool:
            statuses = list(pool.map(ask, range(12)))
        assert 503 in statuses and 200 in statuses and set(statuses) == {200, 503}, statuses
        assert client.completions.create(model=tiny_model.name, prompt="hello", max_tokens=3).usage.completion_tokens
    finally:
        s.stop()


def test_bad_serve_commands_fail_fast_with_the_fix(runs, tmp_path, capsys):
    import socket

    from tasktune.cli import main

    assert main(["serve", str(tmp_path)]) == 2
    assert "is not a tasktune run" in capsys.readouterr().err
    assert main(["serve", str(runs["json"]), "--alias", "no-equals-sign"]) == 2
    assert "is not NAME=RUN" in capsys.readouterr().err
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        assert main(["serve", str(runs["json"]), "--port", str(port)]) == 2  # before any model is loaded
    err = capsys.readouterr().err
    assert f"cannot listen on 127.0.0.1:{port}" in err and "--port" in err


@pytest.mark.parametrize("method", ["prompt", "prefix"])
def test_served_virtual_token_runs_answer_like_predict(tiny_model, tmp_path, method):
    """The server's batches of prompt- and prefix-tuned runs go through the same virtual-token path as predict (peft's
    own generate() gets left padding wrong). Large random weights make every answer depend on the whole prompt."""
    from tasktune.engine import Engine, GenRequest, load_served

    write_jsonl(tmp_path / "train.jsonl", make_rows(24, seed=1))
    task = TaskConfig(name="v", output={"kind": "text"}, data={"train": str(tmp_path / "train.jsonl")})
    cfg = TrainConfig(model=str(tiny_model), method=method, max_steps=2, batch_size=8, precision="fp32",
                      eval_split=0.0, **{method: {"num_virtual_tokens": 4}})  # fmt: skip
    train(task, cfg, tmp_path / "run", force=True)
    served = load_served({"run": tmp_path / "run"}, precision="fp32", progress=lambda _: None)["run"]
    predictor = Predictor.from_run(tmp_path / "run", precision="fp32")
    scramble_weights(served.model)
    scramble_weights(predictor.model)
    inputs = ["hi", "the app crashes every time I open the settings page on my phone, please fix", "refund please"]
    prompts = [predictor.prompt_ids(ex) for ex in examples_from_inputs(inputs)]
    expected = [greedy_reference(predictor.model, predictor.fmt, ids, 6) for ids in prompts]
    got = [r.text for r in Engine().run_batch([GenRequest(served, ids, max_tokens=6) for ids in prompts])]
    assert got == expected and any(expected)


# Bounded strings keep the random base model's answers inside max_tokens.
SCHEMA = {
    "type": "object",
    "properties": {
        "kind": {"type": "string", "enum": ["bug", "billing", "account"]},
        "urgent": {"type": "boolean"},
        "note": {"type": "string", "maxLength": 12},
    },
    "required": ["kind", "urgent", "note"],
    "additionalProperties": False,
}


def test_response_format_constrains_answers_to_the_schema(server, expected, tiny_model):
    import jsonschema

    client = server.client()
    fmt = {"type": "json_schema", "json_schema": {"name": "triage", "schema": SCHEMA, "strict": True}}
    free = [_chat(client, tiny_model.name, t, max_tokens=80).choices[0].message.content for t in INPUTS]
    assert not any(a.startswith("{") for a in free)  # the random base model writes no JSON by itself
    for text in INPUTS:
        r = _chat(client, tiny_model.name, text, max_tokens=80, response_format=fmt)
        assert r.choices[0].finish_reason == "stop"
        jsonschema.validate(json.loads(r.choices[0].message.content), SCHEMA)
    obj = _chat(client, tiny_model.name, INPUTS[0], max_tokens=120, response_format={"type": "json_object"})
    if obj.choices[0].finish_reason == "stop":  # an unbounded object may run past max_tokens: then it is cut
        assert isinstance(json.loads(obj.choices[0].message.content), dict)
    else:
        assert obj.choices[0].message.content.startswith("{")
    # a JSON run is decoded under its own schema by default; "text" turns that off for one request
    assert _chat(client, "fmt-json", INPUTS[0]).choices[0].message.content == expected["json"][0].output
    assert _chat(client, "fmt-json", INPUTS[0], response_format={"type": "text"}).choices[0].finish_reason


def test_a_schema_the_engine_cannot_use_is_a_400_naming_response_format(server, tiny_model):
    bad = {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "string", "not": {"const": "a"}}}}
    with pytest.raises(openai.BadRequestError) as e:
        _chat(server.client(), tiny_model.name, "hi", response_format=bad)
    assert e.value.body["param"] == "response_format" and "response_format.json_schema.schema" in e.value.message
    with pytest.raises(openai.BadRequestError) as e:
        _chat(server.client(), tiny_model.name, "hi", response_format={"type": "json_schema", "json_schema": {}})
    assert e.value.body["param"] == "response_format"
    assert _chat(server.client(), tiny_model.name, "hi", max_tokens=3).usage.completion_tokens == 3  # still serving
