"""Several processes: ``mlcwb train`` under torchrun, two CPU ranks over gloo (accelerate's DDP).

What ``accelerate launch -m mlcwb train CONFIG`` does on many GPUs, run here on one machine's
CPUs: the run trains and one process writes it, a killed run resumes, and two ranks of
batch_size 1 follow a one-process run of batch_size 2 step for step (``batch_indices`` gives
rank r of step k the rows ``(k * world + r) * bs ...``, so both see the same global batches).
FSDP and DeepSpeed are not run here; docs/design.md ("Training and checkpoints") says why.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import torch
from safetensors.torch import load_file

from mlcwb.checkpoints import latest_checkpoint, load_extractor
from mlcwb.io import read_jsonl
from mlcwb.mlc import MLCConfig
from mlcwb.models import load_model
from mlcwb.train import train
from mlcwb.train_config import TrainConfig
from tests.test_train import tiny_config, tiny_prompts

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parent.parent
WORLD = 2
TOTAL = 12  # 8 prompts / (1 row x 2 ranks) = 4 steps an epoch, 3 epochs
TIMEOUT = 600  # the machine may be loaded: starting two ranks alone can take a minute


def _config(tmp: Path, name: str, batch_size: int) -> TrainConfig:
    """DPO (sigmoid) + official MLC: both are means over pairs / prompts, so the mean of two
    ranks' losses over one row each is the loss of the two rows together."""
    data = tmp / "prompts.jsonl"
    if not data.exists():
        tiny_prompts().save(data)
    return tiny_config(tmp, data=str(data), epochs=3, batch_size=batch_size, save_every=1,
                       keep_checkpoints=2, output_dir=str(tmp / name),
                       mlc=MLCConfig(batch_size=batch_size, extractor_dim=16, aux_every=2))


def _command(config: TrainConfig, tmp: Path) -> tuple[list[str], dict[str, str]]:
    path = tmp / f"{Path(config.output_dir).name}.yaml"
    path.write_text(config.to_yaml())
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(WORLD),
           "--master_addr", "127.0.0.1", "--master_port", str(port), "-m", "mlcwb", "train", str(path)]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1",
           "TOKENIZERS_PARALLELISM": "false"}
    env.pop("ACCELERATE_USE_FSDP", None)
    return cmd, env


def _launch(config: TrainConfig, tmp: Path) -> subprocess.CompletedProcess:
    cmd, env = _command(config, tmp)
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=TIMEOUT)


def _summary(config: TrainConfig) -> dict:
    return json.loads((Path(config.output_dir) / "summary.json").read_text())


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    """One unbroken two-process run, shared by the tests below."""
    tmp = tmp_path_factory.mktemp("ddp")
    config = _config(tmp, "two", batch_size=1)
    done = _launch(config, tmp)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    return config, done, tmp


def test_two_processes_train_and_the_final_checkpoint_loads(two_ranks):
    config, done, _ = two_ranks
    summary = _summary(config)
    assert summary["processes"] == WORLD and summary["steps"] == TOTAL
    output = done.stdout + done.stderr
    assert output.count(f"trained {TOTAL} steps") == WORLD, "each rank ends the run"
    final = Path(summary["final_dir"])
    model, _ = load_model(str(final), device="cpu")
    initial, _ = load_model("tiny-random-llama", device="cpu")
    trained = model.state_dict()
    assert all(torch.isfinite(v).all() for v in trained.values())
    assert any(not torch.equal(trained[k], v) for k, v in initial.state_dict().items()), "it trained"
    assert load_extractor(final).proj.weight.shape == (16, initial.config.hidden_size)


def test_one_process_writes_the_run(two_ranks):
    """No duplicated log rows, one summary, the kept checkpoints, and nothing half-written."""
    config, _, _ = two_ranks
    out = Path(config.output_dir)
    assert [r["step"] for r in read_jsonl(out / "log.jsonl")] == list(range(1, TOTAL + 1))
    assert sorted(p.name for p in out.iterdir()) == ["config.yaml", "final", "log.jsonl", "steps",
                                                      "summary.json"]
    assert sorted(p.name for p in (out / "steps").iterdir()) == ["step-00000010", "step-00000011"]
    assert not [p for p in out.rglob("*") if p.name.startswith(".") or ".tmp" in p.name]


def test_two_ranks_of_one_row_follow_one_process_of_two(two_ranks):
    """The same global batches, so the same losses and weights up to float32 rounding: the
    one-process run pads two rows into one batch, the two ranks run one row each and all-reduce
    (sum, then / 2) their gradients, which reorders float32 sums (~1e-7 relative per op). Adam
    carries that through 12 steps; measured: losses and gradient norms within 2e-6 relative,
    final weights within 3e-6 absolute. The tolerance, rtol 1e-4 on losses and gradient norms and
    1e-4 absolute on weights, is ~30-50x that yet far below a step's change (~1e-3 per weight
    at lr 1e-3), so a rank that saw other rows, or a loss logged from one rank's rows only (as
    before ``mlcwb.train._across_processes``: 20% off at step 3), would fail it."""
    config, _, tmp = two_ranks
    one = train(_config(tmp, "one", batch_size=2))
    two = read_jsonl(Path(config.output_dir) / "log.jsonl")
    assert [r["step"] for r in one.log] == [r["step"] for r in two]
    for a, b in zip(one.log, two):
        assert a.keys() >= {"loss", "align_loss"} and ("mlc_loss" in a) == ("mlc_loss" in b)
        for key in ("loss", "align_loss", "mlc_loss", "grad_norm"):
            if key in a:
                assert b[key] == pytest.approx(a[key], rel=1e-4, abs=1e-7), (a["step"], key)
        assert b["tokens"] == a["tokens"], "the same rows: the ranks' real tokens add up"
    mine = load_file(Path(config.output_dir) / "final" / "model.safetensors")
    for name, value in load_file(one.final_dir / "model.safetensors").items():
        assert torch.allclose(mine[name], value, atol=1e-4, rtol=0), name
    assert torch.allclose(load_extractor(Path(config.output_dir) / "final").proj.weight,
                          one.extractor.proj.weight, atol=1e-4, rtol=0)


def _kill_tree(agent: subprocess.Popen) -> None:
    """SIGKILL torchrun and its ranks. Each rank is started in a session of its own
    (torch.distributed.elastic), so killing torchrun's process group alone would leave them
    running: every group is killed."""
    ranks = psutil.Process(agent.pid).children(recursive=True)
    for pid in [agent.pid, *(p.pid for p in ranks)]:
        try:
            os.killpg(os.getpgid(pid), signal.SIGKILL)
        except ProcessLookupError:
            pass
    agent.wait()
    deadline = time.time() + 60
    while time.time() < deadline and any(
            p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in ranks):
        time.sleep(0.1)


def test_a_killed_two_process_run_resumes_to_the_unbroken_runs_weights(two_ranks):
    unbroken, _, tmp = two_ranks
    config = unbroken.replace(output_dir=str(tmp / "killed"))
    cmd, env = _command(config, tmp)
    with open(tmp / "killed.err", "w") as err:
        agent = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=err,
                                 start_new_session=True)
        deadline = time.time() + TIMEOUT
        while (time.time() < deadline and agent.poll() is None
               and latest_checkpoint(config.output_dir) is None):
            time.sleep(0.02)
        try:
            assert agent.poll() is None, \
                f"the run ended before it could be killed: {(tmp / 'killed.err').read_text()[-3000:]}"
            assert latest_checkpoint(config.output_dir) is not None, "no checkpoint in time"
        finally:
            _kill_tree(agent)
    log = Path(config.output_dir) / "log.jsonl"
    done = len(read_jsonl(log, skip_partial_last=True))
    assert 1 <= done < TOTAL

    rerun = _launch(config, tmp)
    assert rerun.returncode == 0, rerun.stderr[-4000:]
    summary = _summary(config)
    assert summary["resumed_from"] >= 1 and summary["steps"] == TOTAL
    assert summary["processes"] == WORLD
    assert [r["step"] for r in read_jsonl(log)] == list(range(1, TOTAL + 1))
    out = Path(config.output_dir)
    assert not [p for p in out.rglob("*") if p.name.startswith(".") or ".tmp" in p.name]
    resumed = load_file(out / "final" / "model.safetensors")
    for name, value in load_file(Path(unbroken.output_dir) / "final" / "model.safetensors").items():
        assert torch.allclose(resumed[name], value, atol=1e-6, rtol=0), name
    assert torch.allclose(load_extractor(out / "final").proj.weight,
                          load_extractor(Path(unbroken.output_dir) / "final").proj.weight,
                          atol=1e-6, rtol=0)
