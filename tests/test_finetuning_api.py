"""`tasktune serve --fine-tuning` started for real (a subprocess), driven by the official `openai` client with only
`base_url` and `api_key` changed: the calls of a script written for OpenAI's fine-tuning service.

Jobs train the tiny model (named `tiny` by --base-model) on chat rows built from tests/tiny.py's task. The server is
SIGKILLed mid-job and restarted; its job must end with the weights of an uninterrupted job of the same seed.
"""

from __future__ import annotations

import csv
import fcntl
import io
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

openai = pytest.importorskip("openai", reason="the serve tests need the test extra: pip install -e '.[test]'")
pytest.importorskip("multipart", reason="uploads need python-multipart: pip install -e '.[serve]'")

from tasktune.predict import Predictor  # noqa: E402
from tests import servers  # noqa: E402
from tests.tiny import make_rows  # noqa: E402

SRC = Path(__file__).resolve().parents[1] / "src"
ALICE, BOB = "alice-key-0123456789abcdef", "bob-key-0123456789abcdef00"
SYSTEM = "Classify the message. Answer with JSON with keys kind and urgent."
UPLOAD_MB = 0.05  # the server's upload cap in these tests (52,428 bytes)


def chat_rows(n: int, seed: int) -> list[dict]:
    """The quick-start task as OpenAI chat rows: a system turn, the message, the JSON answer."""
    return [{"messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": r["input"]},
                          {"role": "assistant", "content": json.dumps(r["output"])}]}
            for r in make_rows(n, seed=seed)]  # fmt: skip


def jsonl(rows: list[dict]) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in rows).encode()


class Server:
    """`tasktune serve --fine-tuning` in a subprocess, on a free loopback port."""

    def __init__(self, state: Path, model: Path, keys: Path, *extra: str):
        env = os.environ | {
            "PYTHONPATH": str(SRC),
            "TASKTUNE_NO_PROGRESS": "1",
            "HF_HUB_OFFLINE": "1",
            "OMP_NUM_THREADS": "1",
        }  # fmt: skip  (one thread: the same float sums in every run)
        cmd = [sys.executable, "-m", "tasktune", "serve", "--fine-tuning", "--state", str(state), "--base-model",
               f"tiny={model}", "--api-keys", str(keys), "--port", "0", "--precision", "fp32", "--max-upload-mb",
               str(UPLOAD_MB), *extra]  # fmt: skip
        self.state = state
        self.proc, self.url, self.lines = servers.start(cmd, env, timeout=120)
        if self.url is None:
            self.kill()
            raise AssertionError("server did not start:\n" + "".join(self.lines))

    def client(self, key: str = ALICE):
        return openai.OpenAI(base_url=self.url + "/v1", api_key=key, max_retries=0, timeout=60)

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait(30)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def wait_for(job_id: str, client, statuses=("succeeded", "failed", "cancelled"), timeout: float = 180):
    deadline = time.monotonic() + timeout
    while True:
        job = client.fine_tuning.jobs.retrieve(job_id)
        if job.status in statuses:
            return job
        assert time.monotonic() < deadline, f"job {job_id} still {job.status} after {timeout}s"
        time.sleep(0.3)


def run_folder(state: Path, job_id: str) -> Path:
    return state / "jobs" / job_id / "run"


def adapter(state: Path, job_id: str) -> dict[str, torch.Tensor]:
    return load_file(run_folder(state, job_id) / "adapter" / "adapter_model.safetensors")


def worker_idle(state: Path) -> bool:
    """True once no training process holds the state folder's lock."""
    with open(state / "worker.lock", "a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        fcntl.flock(f, fcntl.LOCK_UN)
        return True


@pytest.fixture(scope="module")
def keys(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("keys") / "keys.txt"
    path.write_text(f"# tenant key\nalice {ALICE}\nbob {BOB}\n", encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def server(tiny_model, keys, tmp_path_factory):
    s = Server(tmp_path_factory.mktemp("ft-state"), tiny_model, keys, "--job-save-every", "4")
    yield s
    s.stop()


@pytest.fixture(scope="module")
def finished(server):
    """The script a team wrote for OpenAI: upload, create a job, poll it to the end."""
    client = server.client()
    upload = client.files.create(file=("train.jsonl", jsonl(chat_rows(40, seed=1))), purpose="fine-tune")
    held_out = client.files.create(file=("valid.jsonl", jsonl(chat_rows(8, seed=8))), purpose="fine-tune")
    method = {"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 2, "batch_size": 4}}}
    job = client.fine_tuning.jobs.create(model="tiny", training_file=upload.id, validation_file=held_out.id,
                                         suffix="triage", seed=7, metadata={"team": "support"},
                                         method=method)  # fmt: skip
    assert job.status == "validating_files" and job.fine_tuned_model is None
    return upload, wait_for(job.id, client)


def test_an_openai_script_uploads_trains_polls_and_chats_with_the_model(server, finished):
    upload, job = finished
    client = server.client()
    assert job.status == "succeeded", job.error
    assert job.fine_tuned_model == f"ft:tiny:triage:{job.id.removeprefix('ftjob-')[:8]}"
    assert job.trained_tokens > 0 and job.finished_at >= job.created_at
    assert job.hyperparameters.n_epochs == 2 and job.hyperparameters.batch_size == 4
    assert job.metadata == {"team": "support"} and job.seed == 7 and job.training_file == upload.id
    assert job.method.supervised.hyperparameters.n_epochs == 2
    assert all(e.data["valid_loss"] is None or e.data["valid_loss"] > 0 for e in
               client.fine_tuning.jobs.list_events(job.id, limit=100) if e.type == "metrics")  # fmt: skip
    assert client.files.retrieve(upload.id).filename == "train.jsonl"
    assert client.files.content(upload.id).read() == jsonl(chat_rows(40, seed=1))

    events = list(client.fine_tuning.jobs.list_events(job.id, limit=5))  # the client pages through `after`
    messages = [e.message for e in events]
    steps = [e.data["step"] for e in events if e.type == "metrics"]
    assert steps == list(range(max(steps), 0, -1))  # newest first, every step once
    assert "Fine-tuning job started" in messages and messages[0] == "The job has successfully completed"
    assert len(events) == len({e.id for e in events})

    [result_id] = job.result_files
    assert client.files.retrieve(result_id).purpose == "fine-tune-results"
    table = list(csv.DictReader(io.StringIO(client.files.content(result_id).text)))
    assert [int(r["step"]) for r in table] == sorted(steps) == list(range(1, 21))  # 2 epochs of 40 rows by 4
    assert any(r["valid_loss"] for r in table)  # measured on the validation file
    assert all(float(r["train_loss"]) > 0 for r in table)
    checkpoints = client.fine_tuning.jobs.checkpoints.list(job.id).data
    assert checkpoints and checkpoints[0].step_number == max(steps)
    assert checkpoints[0].fine_tuned_model_checkpoint.startswith(job.fine_tuned_model + ":ckpt-step-")

    assert job.fine_tuned_model in {m.id for m in client.models.list().data}
    text = make_rows(3, seed=5)[2]["input"]
    answer = client.chat.completions.create(model=job.fine_tuned_model, messages=[{"role": "user", "content": text}])
    want = Predictor.from_run(run_folder(server.state, job.id), precision="fp32", merge=False).predict([text])[0]
    assert answer.choices[0].message.content == want.output  # the job's own weights answer
    assert [j.id for j in client.fine_tuning.jobs.list(limit=1)] == [job.id]  # the only job so far (page of one)


def test_responses_never_reveal_server_paths(server, finished):
    _, job = finished
    for path in ("/v1/models", f"/v1/fine_tuning/jobs/{job.id}", f"/v1/fine_tuning/jobs/{job.id}/events?limit=100",
                 "/v1/files", "/health"):  # fmt: skip
        req = urllib.request.Request(server.url + path, headers={"Authorization": f"Bearer {ALICE}"})
        body = urllib.request.urlopen(req, timeout=30).read().decode()
        assert str(server.state) not in body and "/tmp" not in body, path
    assert all("run" not in m.model_extra for m in server.client().models.list().data)


def test_a_second_tenant_gets_404_for_the_first_ones_file_job_and_model(server, finished):
    upload, job = finished
    bob = server.client(BOB)
    for call in (lambda: bob.files.retrieve(upload.id), lambda: bob.files.content(upload.id),
                 lambda: bob.files.delete(upload.id), lambda: bob.fine_tuning.jobs.retrieve(job.id),
                 lambda: bob.fine_tuning.jobs.cancel(job.id), lambda: bob.fine_tuning.jobs.list_events(job.id),
                 lambda: bob.chat.completions.create(model=job.fine_tuned_model,
                                                     messages=[{"role": "user", "content": "hi"}])):  # fmt: skip
        with pytest.raises(openai.NotFoundError):
            call()
    assert job.fine_tuned_model not in {m.id for m in bob.models.list().data}
    assert "tiny-model" in " ".join(m.id for m in bob.models.list().data)  # the shared base is everyone's
    assert list(bob.files.list()) == [] and list(bob.fine_tuning.jobs.list()) == []
    with pytest.raises(openai.BadRequestError):  # nor can a job train on another tenant's file
        bob.fine_tuning.jobs.create(model="tiny", training_file=upload.id)
    with pytest.raises(openai.AuthenticationError):
        server.client("not-a-key-0123456789").files.list()
    assert server.client().files.retrieve(upload.id).id == upload.id  # still alice's


def test_a_broken_line_fails_the_job_with_an_error_naming_it(server):
    client = server.client()
    lines = jsonl(chat_rows(12, seed=2)).decode().splitlines(keepends=True)
    lines[6] = '{"messages": [{"role": "user", "content": "unclosed}\n'
    upload = client.files.create(file=("broken.jsonl", "".join(lines).encode()), purpose="fine-tune")
    job = wait_for(client.fine_tuning.jobs.create(model="tiny", training_file=upload.id).id, client)
    assert job.status == "failed" and job.fine_tuned_model is None
    assert job.error.code == "invalid_training_file" and job.error.param == "training_file"
    assert "line 7: not valid JSON" in job.error.message and upload.id in job.error.message
    assert "1 unusable row" in job.error.message


def test_uploads_are_size_capped_and_type_checked(server):
    client = server.client()
    big = jsonl(chat_rows(400, seed=3))
    assert len(big) > UPLOAD_MB * 1024 * 1024
    with pytest.raises(openai.APIStatusError) as e:
        client.files.create(file=("big.jsonl", big), purpose="fine-tune")
    assert e.value.status_code == 413 and e.value.code == "file_too_large"
    with pytest.raises(openai.BadRequestError) as e:
        client.files.create(file=("model.bin", b"\x00\x01\xff"), purpose="fine-tune")
    assert "jsonl" in e.value.message
    with pytest.raises(openai.BadRequestError) as e:
        client.files.create(file=("x.jsonl", b"\xff\xfe{}\n"), purpose="fine-tune")
    assert "UTF-8" in e.value.message
    with pytest.raises(openai.BadRequestError) as e:
        client.files.create(file=("x.jsonl", b"{}\n"), purpose="batch")
    assert e.value.param == "purpose"
    evil = client.files.create(file=("../../escape.jsonl", b"{}\n"), purpose="fine-tune")
    assert evil.filename == "escape.jsonl"
    assert not (server.state.parent / "escape.jsonl").exists()
    assert (server.state / "files" / evil.id).read_bytes() == b"{}\n"
    assert client.files.delete(evil.id).deleted
    with pytest.raises(openai.NotFoundError):
        client.files.retrieve(evil.id)


def test_cancel_stops_a_running_job_within_one_step(server):
    client = server.client()
    upload = client.files.create(file=("long.jsonl", jsonl(chat_rows(40, seed=4))), purpose="fine-tune")
    job = client.fine_tuning.jobs.create(model="tiny", training_file=upload.id,
                                         hyperparameters={"n_epochs": 50, "batch_size": 1})  # fmt: skip
    metrics = run_folder(server.state, job.id) / "metrics.jsonl"
    deadline = time.monotonic() + 120
    while not (metrics.is_file() and len(metrics.read_text().splitlines()) >= 3):
        assert time.monotonic() < deadline, "the job never started training"
        time.sleep(0.02)
    cancelled = client.fine_tuning.jobs.cancel(job.id)
    at_cancel = len(metrics.read_text().splitlines())
    assert cancelled.status == "cancelled"
    deadline = time.monotonic() + 60
    while not worker_idle(server.state):
        assert time.monotonic() < deadline, "the training process did not stop"
        time.sleep(0.1)
    last = json.loads(metrics.read_text().splitlines()[-1])["step"]
    assert last <= at_cancel + 1 < 50 * 36  # the step under way when the signal came, then no other
    job = client.fine_tuning.jobs.retrieve(job.id)
    assert job.status == "cancelled" and job.fine_tuned_model is None
    assert "Job cancelled" in [e.message for e in client.fine_tuning.jobs.list_events(job.id, limit=100)]
    with pytest.raises(openai.BadRequestError):
        client.fine_tuning.jobs.cancel(job.id)


@pytest.mark.timeout(400)
def test_a_server_killed_mid_job_resumes_it_from_its_checkpoint_to_the_uninterrupted_weights(
    tiny_model, keys, tmp_path
):
    state = tmp_path / "state"
    server = Server(state, tiny_model, keys, "--job-save-every", "5")
    client = server.client()
    upload = client.files.create(file=("train.jsonl", jsonl(chat_rows(40, seed=6))), purpose="fine-tune")
    settings = dict(model="tiny", training_file=upload.id, seed=11, hyperparameters={"n_epochs": 6, "batch_size": 1})
    killed = client.fine_tuning.jobs.create(**settings)
    whole = client.fine_tuning.jobs.create(**settings)  # queued behind: the uninterrupted run of the same job
    checkpoints = run_folder(state, killed.id) / "checkpoints"
    deadline = time.monotonic() + 120
    while not (checkpoints / "step-00000010").is_dir():
        assert time.monotonic() < deadline, "no checkpoint came"
        time.sleep(0.02)
    server.proc.send_signal(signal.SIGKILL)
    server.proc.wait(30)
    deadline = time.monotonic() + 30
    while not worker_idle(state):  # its training process ends itself once the server is gone
        assert time.monotonic() < deadline, "the orphaned training process kept running"
        time.sleep(0.1)
    assert not (run_folder(state, killed.id) / "adapter").exists()  # it really died mid-job

    server = Server(state, tiny_model, keys, "--job-save-every", "5")
    try:
        client = server.client()
        assert client.fine_tuning.jobs.retrieve(whole.id).status == "queued"  # the queue survived the kill
        deadline = time.monotonic() + 240
        while (first := client.fine_tuning.jobs.retrieve(killed.id)).status == "running":
            assert client.fine_tuning.jobs.retrieve(whole.id).status == "queued"  # one job at a time, resumed first
            assert time.monotonic() < deadline
            time.sleep(0.2)
        assert first.status == "succeeded", first.error
        second = wait_for(whole.id, client, timeout=240)
        assert second.status == "succeeded", second.error
        events = list(client.fine_tuning.jobs.list_events(killed.id, limit=1000))
        [resumed] = [e.data["step"] for e in events if e.message.startswith("Resuming from the checkpoint of step")]
        assert resumed >= 10  # continued from a checkpoint, not from the first step
        assert not any(e.message.startswith("Resuming") for e in client.fine_tuning.jobs.list_events(whole.id))
        a, b = adapter(state, killed.id), adapter(state, whole.id)
        assert a.keys() == b.keys()
        assert all(torch.equal(a[k], b[k]) for k in a)  # bit-identical to the uninterrupted job
        steps = [json.loads(line)["step"] for line in (run_folder(state, killed.id) / "metrics.jsonl").open()]
        assert steps == list(range(1, len(steps) + 1))  # every step once
        for job in (first, second):  # the second joined the first one's base as one more adapter, at run time
            reply = client.chat.completions.create(model=job.fine_tuned_model,
                                                   messages=[{"role": "user", "content": "refund please"}])  # fmt: skip
            run = Predictor.from_run(run_folder(state, job.id), precision="fp32", merge=False)
            assert reply.choices[0].message.content == run.predict(["refund please"])[0].output
    finally:
        server.stop()


# --- the pieces, without a server ----------------------------------------------------------------------------------
def test_api_keys_file_names_tenants_and_every_bad_line(tmp_path):
    from tasktune.errors import ConfigError
    from tasktune.jobs.tenants import read_api_keys, tenant_of

    good = tmp_path / "keys.txt"
    good.write_text(f"alice {ALICE}  # ops\n\nalice {ALICE[::-1]}\nbob {BOB}\n", encoding="utf-8")
    keys = read_api_keys(good)
    assert keys == {ALICE: "alice", ALICE[::-1]: "alice", BOB: "bob"}
    assert tenant_of(f"Bearer {BOB}", None, keys) == "bob"
    assert tenant_of(f"Bearer {BOB}x", None, keys) is None and tenant_of(None, None, keys) is None
    assert tenant_of(None, None, None) == "default" and tenant_of("Bearer k", "k", None) == "default"
    bad = tmp_path / "bad.txt"
    bad.write_text(f"alice\nbad/name {ALICE}\ncarol short\nbob {BOB}\ndave {BOB}\n", encoding="utf-8")
    with pytest.raises(ConfigError) as e:
        read_api_keys(bad)
    for line in (1, 2, 3, 5):
        assert f"bad.txt:{line}:" in e.value.message
    assert "bad.txt:4:" not in e.value.message and BOB not in e.value.message  # keys are never printed


def test_chat_rows_are_converted_line_for_line_and_bad_ones_named(tmp_path):
    from tasktune.jobs.convert import JobError, convert_upload

    rows = [
        {"messages": [{"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
                      {"role": "assistant", "content": "x", "weight": 1}]},
        {"prompt": "p", "completion": "c"},
    ]  # fmt: skip
    src = tmp_path / "up"
    src.write_text(json.dumps(rows[0]) + "\n\n" + json.dumps(rows[1]) + "\n", encoding="utf-8")
    assert convert_upload(src, tmp_path / "out.jsonl", file_id="file-1", param="training_file") == 2
    out = (tmp_path / "out.jsonl").read_text(encoding="utf-8").splitlines()
    assert json.loads(out[0])["messages"][0] == {"role": "user", "content": "ab"} and out[1] == ""
    assert json.loads(out[2])["messages"][-1] == {"role": "assistant", "content": "c"}

    weighted = {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a", "weight": 0}]}
    tools = {"messages": [{"role": "user", "content": "q"}], "tools": []}
    src.write_text("\n".join([json.dumps(rows[1]), json.dumps(weighted), "[1]", json.dumps(tools)]) + "\n")
    with pytest.raises(JobError) as e:
        convert_upload(src, tmp_path / "bad.jsonl", file_id="file-2", param="validation_file")
    assert e.value.code == "invalid_validation_file" and e.value.param == "validation_file"
    assert "has 3 unusable row(s)" in e.value.message and "file-2" in e.value.message
    assert "line 2: messages[1].weight" in e.value.message and "line 3:" in e.value.message
    assert "line 4: 'tools'" in e.value.message and not (tmp_path / "bad.jsonl").exists()


def test_hyperparameters_map_to_settings_and_auto_leaves_them_to_the_recipe():
    from tasktune.jobs.convert import resolved_hyperparameters, train_settings
    from tasktune.recipe import LORA_LEARNING_RATE

    given = train_settings({"n_epochs": 3, "batch_size": 2, "learning_rate_multiplier": 2.0}, model="m", seed=5,
                           save_every=7)  # fmt: skip
    assert (given.epochs, given.batch_size, given.learning_rate) == (3.0, 2, 2 * LORA_LEARNING_RATE)
    assert given.time_budget is None and {"time_budget", "patience", "epochs"} <= given.model_fields_set
    assert (given.seed, given.save_every, given.method) == (5, 7, "lora")
    auto = train_settings({"n_epochs": "auto", "batch_size": "auto", "learning_rate_multiplier": "auto"}, model="m",
                          seed=0, save_every=7)  # fmt: skip
    assert not {"epochs", "batch_size", "learning_rate", "time_budget"} & auto.model_fields_set
    assert resolved_hyperparameters({"epochs": 20.0, "batch_size": 4, "learning_rate": LORA_LEARNING_RATE}) == {
        "n_epochs": 20, "batch_size": 4, "learning_rate_multiplier": 1.0}  # fmt: skip


@pytest.mark.parametrize("newest_first", [True, False])
def test_lists_page_by_the_id_after_which_they_continue(tmp_path, newest_first):
    from tasktune.jobs.store import Store

    store = Store(tmp_path)
    ids = [store.add_file(f"file-{i:04d}", "alice" if i % 3 else "bob", "f.jsonl", "fine-tune", 1)["id"]
           for i in range(10)]  # fmt: skip
    mine = [i for n, i in enumerate(ids) if n % 3][:: -1 if newest_first else 1]
    seen, after = [], None
    while True:
        rows, more = store.page("files", {"tenant": "alice"}, after, 2, newest_first)
        seen += [r["id"] for r in rows]
        if not more:
            break
        after = rows[-1]["id"]
    assert seen == mine
    assert store.page("files", {"tenant": "alice"}, ids[0], 5, newest_first) == ([], False)  # bob's id: no place here
