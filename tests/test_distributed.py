"""Data-parallel training: two real processes (torchrun, gloo on this CPU) against one; the shipped launch configs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tasktune.config import TrainConfig
from tasktune.train import iter_micro_batches

ROOT = Path(__file__).resolve().parent.parent
SRC = ROOT / "src"


def _env(**extra: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    return env | {"PYTHONPATH": str(SRC), "TASKTUNE_NO_PROGRESS": "1", "HF_HUB_OFFLINE": "1"} | extra


def _train_cmd(task_dir: Path, model: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "tasktune", "train", "--task", str(task_dir / "task.yaml"), "--model", str(model),
            "--out", str(out), "--precision", "fp32", "--batch-size", "4", "--learning-rate", "5e-3", "--seed", "3",
            *extra]  # fmt: skip


def _losses(run: Path) -> list[tuple[int, float]]:
    return [(r["step"], r["train/loss"]) for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())]


# Two processes each take 4 rows per step; one process takes the same 8 rows as 2 accumulated micro-batches of 4.
# Both normalise by the supervised tokens of all 8 rows, so the steps differ only in the order of float sums:
# measured identical to the last digit here; the stated tolerance is 1e-5 relative.
LOSS_TOLERANCE = 1e-5


@pytest.mark.timeout(300)
def test_two_processes_match_one_with_the_same_global_batch_and_only_rank_0_writes(tiny_model, task_dir, tmp_path):
    spy = tmp_path / "spy"
    spy.mkdir()
    two, one = tmp_path / "two", tmp_path / "one"
    env = _env(PYTHONPATH=f"{SRC}{os.pathsep}{ROOT / 'tests' / 'write_spy'}", TASKTUNE_WRITE_SPY=str(spy),
               TASKTUNE_WRITE_SPY_WATCH=str(two), OMP_NUM_THREADS="1")  # fmt: skip
    proc = subprocess.run(
        _train_cmd(task_dir, tiny_model, two, "--max-steps", "6", "--processes", "2"),
        env=env, capture_output=True, text=True, timeout=240,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "effective batch 8 rows per step (4 per micro-batch x 1 accumulated x 2 process(es))" in proc.stdout
    assert proc.stdout.count("parameters trainable") == 1  # one process reports
    single = subprocess.run(
        _train_cmd(task_dir, tiny_model, one, "--max-steps", "6", "--grad-accum", "2"),
        env=_env(OMP_NUM_THREADS="1"), capture_output=True, text=True, timeout=240,
    )  # fmt: skip
    assert single.returncode == 0, single.stderr[-3000:]

    a, b = _losses(two), _losses(one)
    assert [s for s, _ in a] == [s for s, _ in b] == [1, 2, 3, 4, 5, 6]
    for (_, la), (_, lb) in zip(a, b, strict=True):
        assert la == pytest.approx(lb, rel=LOSS_TOLERANCE)
    wa, wb = load_file(two / "adapter/adapter_model.safetensors"), load_file(one / "adapter/adapter_model.safetensors")
    for name in wb:
        torch.testing.assert_close(wa[name], wb[name], rtol=1e-4, atol=1e-6)

    written = {r: (spy / f"rank-{r}.txt").read_text().split("\n") for r in (0, 1)}
    assert any("metrics.jsonl" in w for w in written[0]) and any("adapter" in w for w in written[0])  # the spy sees
    assert written[1] == [""], f"rank 1 wrote into the run folder: {written[1][:5]}"


def _take(it, n):
    return [next(it) for _ in range(n)]


def test_every_process_gets_the_same_steps_per_epoch_without_overlap(tiny_model, tiny_tokenizer):
    """10 rows in batches of 2 make 5 batches per epoch: with 2 processes each takes 2, the fifth (a different one
    each epoch) is left out, so both stay in the same epoch step by step (an uneven split let them drift apart)."""
    from tasktune.render import Encoded

    rows = [Encoded(list(range(3 + i)), [-100] * (2 + i) + [7]) for i in range(10)]
    cfg = TrainConfig(batch_size=2, seed=5)
    per_rank = [_take(iter_micro_batches(rows, cfg, 0, rank, 2), 6) for rank in (0, 1)]
    for got in per_rank:
        assert [(e, i) for e, i, _ in got] == [(0, 0), (0, 1), (1, 0), (1, 1), (2, 0), (2, 1)]
    for epoch in range(3):
        seen = [
            {int((b["attention_mask"].sum(1)).tolist()[k]) for e, _, b in got if e == epoch for k in range(2)}
            for got in per_rank
        ]  # fmt: skip  (row lengths are distinct, so they name the rows)
        assert not seen[0] & seen[1], "two processes trained on the same row in one epoch"
        assert len(seen[0] | seen[1]) == 8
    alone = _take(iter_micro_batches(rows, cfg, 0), 5)
    assert [(e, i) for e, i, _ in alone] == [(0, i) for i in range(5)]  # one process still takes every batch
    resumed = _take(iter_micro_batches(rows, cfg, 0, 1, 2, start=(1, 1)), 2)
    for (e1, i1, b1), (e2, i2, b2) in zip(resumed, per_rank[1][3:5], strict=True):
        assert (e1, i1) == (e2, i2) and torch.equal(b1["input_ids"], b2["input_ids"])


def test_more_processes_than_batches_is_a_clear_error():
    from tasktune.errors import DataError
    from tasktune.render import Encoded

    rows = [Encoded([1, 2, 3], [-100, -100, 3])] * 3
    with pytest.raises(DataError, match="fewer than the 4 processes"):
        next(iter_micro_batches(rows, TrainConfig(batch_size=2), 0, 0, 4))


CONFIGS = sorted((ROOT / "configs" / "accelerate").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_shipped_accelerate_config_is_accepted_by_accelerate_launch(path):
    """accelerate's own launcher reads the file and builds the environment it would start the processes with."""
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser
    from accelerate.utils.launch import prepare_multi_gpu_env

    args = launch_command_parser().parse_args(["--config_file", str(path), "-m", "tasktune", "train"])
    _validate_launch_command(args)
    expected = {"ddp.yaml": "multi_gpu", "fsdp.yaml": "use_fsdp"}.get(path.name, "use_deepspeed")
    assert getattr(args, expected) and args.num_processes == 8 and args.module
    if not args.use_deepspeed:
        env = prepare_multi_gpu_env(args)
        assert env.get("ACCELERATE_USE_FSDP", "false") == ("true" if args.use_fsdp else "false")
    scaling = (ROOT / "docs" / "scaling.md").read_text()
    assert f"configs/accelerate/{path.name}" in scaling  # every shipped config is shown with its launch line


@pytest.mark.timeout(240)
def test_accelerate_launch_runs_the_module(tiny_model, task_dir, tmp_path):
    """`accelerate launch -m tasktune train ...`, the entry point of the GPU launch lines (one CPU process here)."""
    run = tmp_path / "run"
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--cpu", "--num_processes", "1",
              "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "-m"]  # fmt: skip
    cmd = launch + _train_cmd(task_dir, tiny_model, run, "--max-steps", "2")[2:]  # [2:]: drop "python -m"
    proc = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=200)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (run / "adapter" / "adapter_model.safetensors").is_file() and len(_losses(run)) == 2
