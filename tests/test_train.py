"""Training: config validation, loss pieces, CPU runs on the tiny model, NaN stop, kill + resume, trl."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from mlcwb.checkpoints import latest_checkpoint, load_extractor
from mlcwb.data import Prompt, PromptSet
from mlcwb.errors import ConfigError, LanguageError, TrainingError
from mlcwb.io import read_jsonl
from mlcwb.prompt_states import computed_positions, length_buckets, prompt_states, shared_prefix
from mlcwb.mlc import Extractor, MLCConfig, mlc_loss
from mlcwb.models import encode_prompts, load_model
from mlcwb.preference import dpo_loss
from mlcwb.train import train
from mlcwb.train_config import REFUSAL, RENAMED, TrainConfig
from mlcwb.train_data import collate_align, encode_mlc, prepare_data
from mlcwb.train_module import TrainModule
from mlcwb.train_plan import plan

LANGS = ["en", "de", "fr"]


def tiny_prompts(n: int = 8) -> PromptSet:
    prompts = []
    for i in range(n):
        harmful = i % 2 == 0
        prompts.append(Prompt(
            id=f"p{i}", harmful=harmful, category="test",
            text={"en": f"How do I do thing {i}?", "de": f"Wie mache ich Ding {i}?",
                  "fr": f"Comment faire la chose {i} ?"},
            response="I can't help with that." if harmful else f"Here is how: step {i}.",
            rejected=f"Sure, here is how to do {i}." if harmful else None))
    return PromptSet(prompts, "tiny")


def tiny_config(tmp_path: Path, **changes) -> TrainConfig:
    base = dict(model="tiny-random-llama", mlc_languages=LANGS, epochs=1, batch_size=2, lr=1e-3,
                precision="no", device="cpu", output_dir=str(tmp_path / "run"),
                mlc=MLCConfig(batch_size=2, extractor_dim=16, aux_every=2))
    base.update(changes)
    return TrainConfig(**base).validate()


# ------------------------------------------------------------------ config

def test_unknown_keys_name_the_closest_one():
    with pytest.raises(ConfigError, match="aux_every"):
        TrainConfig.from_dict({"mlc": {"aux_evry": 2}})
    with pytest.raises(ConfigError, match="'batch_size'"):
        TrainConfig.from_dict({"batchsize": 2})


@pytest.mark.parametrize("bad", [{"batch_size": 0}, {"epochs": 0}, {"align": "ppo"},
                                 {"schedule": "both"}, {"beta": 0}, {"mlc_languages": ["en"]},
                                 {"mlc_languages": ["en", "en"]}, {"max_steps": 0},
                                 {"mlc": {"tau": -1}}, {"align": "none", "mlc": None}])
def test_impossible_values_are_config_errors(bad):
    with pytest.raises(ConfigError):
        TrainConfig.from_dict(bad)


def test_yaml_round_trip(tmp_path):
    config = tiny_config(tmp_path)
    path = tmp_path / "c.yaml"
    path.write_text(config.to_yaml())
    again = TrainConfig.from_yaml(path)
    assert again == config and isinstance(again.mlc, MLCConfig)
    with pytest.raises(ConfigError, match="does not exist"):
        TrainConfig.from_yaml(tmp_path / "missing.yaml")


def test_sizes_and_languages_are_checked_against_the_data(tmp_path, tiny_llama):
    _, tok = tiny_llama
    with pytest.raises(LanguageError, match="zh"):
        prepare_data(tiny_config(tmp_path, mlc_languages=["en", "zh"]), tiny_prompts(), tok)
    data = prepare_data(tiny_config(tmp_path), tiny_prompts(), tok)
    with pytest.raises(ConfigError, match="batch_size 16"):
        plan(tiny_config(tmp_path, batch_size=16), len(data.align), len(data.mlc_texts))
    with pytest.raises(ConfigError, match="mlc.batch_size 9"):
        plan(tiny_config(tmp_path, mlc=MLCConfig(batch_size=9)), len(data.align), len(data.mlc_texts))


def test_dpo_pairs_use_a_refusal_as_rejected_for_benign_prompts(tmp_path, tiny_llama):
    _, tok = tiny_llama
    data = prepare_data(tiny_config(tmp_path), tiny_prompts(), tok)
    refusal = tok(REFUSAL, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    assert len(data.align) == 8
    assert [e.rejected_ids == refusal for e in data.align] == [False, True] * 4
    assert len(prepare_data(tiny_config(tmp_path, benign_rejected="skip"), tiny_prompts(), tok).align) == 4
    assert data.mlc_texts[1] == ["How do I do thing 1?", "Wie mache ich Ding 1?", "Comment faire la chose 1 ?"]


# ------------------------------------------------------------------ loss pieces

def test_answer_logprobs_match_an_independent_scorer(tmp_path, tiny_llama):
    from mlcwb.logprobs import continuation_logprobs

    model, tok = tiny_llama
    data = prepare_data(tiny_config(tmp_path, align="sft"), tiny_prompts(), tok)
    batch = collate_align(data.align[:3], tok.pad_token_id, dpo=False)
    module = TrainModule(model, Extractor(64, 8), pad_id=tok.pad_token_id)
    with torch.no_grad():
        logps = module(align=batch)["logps"]
    prompts = [p.text["en"] for p in tiny_prompts()][:3]
    answers = [p.response + tok.eos_token for p in tiny_prompts()][:3]
    expected = [lp for lp, _ in continuation_logprobs(model, tok, prompts, answers)]
    assert torch.allclose(logps, torch.tensor(expected), atol=1e-3)


def test_official_batching_computes_the_same_numbers(tmp_path, tiny_llama):
    model, tok = tiny_llama
    data = prepare_data(tiny_config(tmp_path), tiny_prompts(), tok)
    align = collate_align(data.align[:2], tok.pad_token_id, dpo=True)
    mlc = encode_mlc(tok, data.mlc_texts[:2], True)
    ours = TrainModule(model, Extractor(64, 8), pad_id=tok.pad_token_id)
    official = TrainModule(model, ours.extractor, batching="official", pad_id=tok.pad_token_id)
    with torch.no_grad():
        a, b = ours(align=align, mlc=mlc), official(align=align, mlc=mlc)
    assert torch.allclose(a["logps"], b["logps"], atol=1e-3)
    assert torch.allclose(a["z"], b["z"], atol=1e-4)


def test_length_buckets_partition_rows_and_bound_padding():
    lengths = [12, 95, 40, 41, 300, 13, 88, 12, 39, 60]
    buckets = length_buckets(lengths, max_padding=0.25)
    assert sorted(i for rows in buckets for i in rows) == list(range(len(lengths)))
    for rows in buckets:
        width, real = max(lengths[i] for i in rows), sum(lengths[i] for i in rows)
        assert len(rows) == 1 or width * len(rows) <= 1.25 * real
    assert computed_positions(torch.ones(1, 1).expand(10, 300) * (torch.arange(300) < torch.tensor(
        lengths).unsqueeze(1)), bucketed=True) < 0.5 * 10 * 300
    assert length_buckets([7, 7, 7]) == [[0, 1, 2]]


@pytest.mark.parametrize("pooling", ["last", "content_mean"])
def test_bucketed_mlc_forward_gives_the_one_batch_states_and_gradients(tiny_llama, pooling):
    model, tok = tiny_llama
    groups = [["Hi.", "A much longer prompt with many words in it, " * 3, "Mid length text here."],
              ["Another one.", "x" * 90, "Short."]]
    mlc = encode_mlc(tok, groups, True)
    assert shared_prefix(mlc["input_ids"], mlc["attention_mask"], mlc["content_mask"]) > 0
    assert len(length_buckets(mlc["attention_mask"].sum(-1).tolist())) > 1
    results = []
    for bucketed in (False, True):
        model.zero_grad()
        states = prompt_states(model, mlc["input_ids"], mlc["attention_mask"], pooling=pooling,
                               content_mask=mlc["content_mask"], bucketed=bucketed)
        states.pow(2).sum().backward()
        grads = [p.grad.clone() for p in model.parameters() if p.grad is not None]
        results.append((states.detach(), grads))
    (one, g_one), (buck, g_buck) = results
    assert torch.allclose(one, buck, atol=1e-4)
    assert len(g_one) == len(g_buck)
    for a, b in zip(g_one, g_buck):
        assert torch.allclose(a, b, atol=1e-4, rtol=1e-3)
    prefix = shared_prefix(mlc["input_ids"], mlc["attention_mask"], mlc["content_mask"])
    assert computed_positions(mlc["attention_mask"], True, prefix) < 0.7 * mlc["attention_mask"].numel()


def test_bucketed_mlc_forward_refuses_left_padding(tiny_llama):
    model, tok = tiny_llama
    enc = encode_prompts(tok, ["a", "a longer one"], True)
    with pytest.raises(ConfigError, match="right-padded"):
        prompt_states(model, enc["input_ids"], enc["attention_mask"], bucketed=True)


def test_dpo_loss_is_log2_when_policy_equals_reference():
    logps = torch.tensor([-3.0, -5.0, -4.0, -1.0])
    ref = torch.stack([logps[:2], logps[2:]], dim=1)
    loss, acc = dpo_loss(logps, ref, beta=0.1)
    assert loss.item() == pytest.approx(math.log(2)) and acc.item() == 0
    better = logps + torch.tensor([1.0, 1.0, 0.0, 0.0])
    assert dpo_loss(better, ref, 0.1)[0].item() < math.log(2)


# ------------------------------------------------------------------ runs

def _state(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.mark.slow
def test_dpo_plus_mlc_trains_saves_and_reloads(tmp_path):
    config = tiny_config(tmp_path, epochs=2, save_every=2, keep_checkpoints=1)
    result = train(config, prompts=tiny_prompts())
    rows = result.log
    assert [r["step"] for r in rows] == list(range(1, 9))
    assert all(("mlc_loss" in r) == (r["step"] % 2 == 1) for r in rows), "MLC every aux_every=2 steps"
    assert all(math.isfinite(r["loss"]) for r in rows)
    assert rows[-1]["align_loss"] < rows[0]["align_loss"]
    assert [p.name for p in (result.output_dir / "steps").iterdir()] == ["step-00000006"]
    reloaded, _ = load_model(str(result.final_dir), device="cpu")
    for name, value in result.model.state_dict().items():
        assert torch.equal(reloaded.state_dict()[name], value), name
    ext = load_extractor(result.final_dir)
    assert torch.equal(ext.proj.weight, result.extractor.proj.weight)
    assert "mlc_loss_ref" in rows[0] and rows[0]["mlc_loss_ref"] == pytest.approx(rows[0]["mlc_loss"])


@pytest.mark.slow
def test_mlc_only_lowers_the_mlc_objective_of_the_model(tmp_path):
    """With a frozen extractor the loss can only fall by moving the model's own states."""
    model, tok = load_model("tiny-random-llama", device="cpu")
    prompts = tiny_prompts()
    config = tiny_config(tmp_path, align="none", epochs=2, lr=3e-3,
                         mlc=MLCConfig(batch_size=4, extractor="frozen", extractor_dim=16))

    def objective() -> float:
        enc = encode_mlc(tok, [[p.text[l] for l in LANGS] for p in prompts], True)
        with torch.no_grad():
            states = prompt_states(model, enc["input_ids"], enc["attention_mask"])
        return mlc_loss(states.view(len(prompts), len(LANGS), -1)).item()

    before = objective()
    train(config, model, tok, prompts)
    assert objective() < before - 1e-3


@pytest.mark.slow
def test_sequential_schedule_and_sft_with_lora(tmp_path):
    config = tiny_config(tmp_path, align="sft", schedule="sequential", max_steps=6)
    config = TrainConfig.from_dict({**config.to_dict(), "lora": {"r": 4, "alpha": 8}})
    result = train(config, prompts=tiny_prompts())
    assert [r["phase"] for r in result.log] == ["align"] * 4 + ["mlc"] * 2
    assert all("mlc_loss" in r for r in result.log[4:]) and "mlc_loss" not in result.log[0]
    merged, _ = load_model(str(result.final_dir), device="cpu")
    assert not any("lora" in k for k in merged.state_dict())


@pytest.mark.slow
def test_nan_never_reaches_the_optimizer_and_the_last_good_state_is_kept(tmp_path, monkeypatch):
    import mlcwb.mlc as mlc_module

    calls = {"n": 0}
    real = mlc_module.mlc_objective

    def poisoned(*args, **kwargs):
        calls["n"] += 1
        value = real(*args, **kwargs)
        return value * float("nan") if calls["n"] == 3 else value  # step 3 (2 calls per MLC step)

    monkeypatch.setattr(mlc_module, "mlc_objective", poisoned)  # what mlc_term calls
    model, tok = load_model("tiny-random-llama", device="cpu")
    config = tiny_config(tmp_path, epochs=2)
    snapshots = []
    real_step = torch.optim.AdamW.step

    def recording_step(self, *a, **k):
        out = real_step(self, *a, **k)
        snapshots.append(_state(model))
        return out

    monkeypatch.setattr(torch.optim.AdamW, "step", recording_step)
    with pytest.raises(TrainingError, match="Non-finite loss at step 3") as info:
        train(config, model, tok, tiny_prompts())
    assert "step-00000002" in str(info.value)
    assert len(snapshots) == 2, "the poisoned step must not step the optimizer"
    saved = load_file(latest_checkpoint(config.output_dir) / "model.safetensors")
    assert all(torch.equal(saved[k], snapshots[-1][k]) for k in saved)
    assert all(torch.isfinite(v).all() for v in _state(model).values())


@pytest.mark.slow
def test_killed_run_resumes_to_the_same_weights(tmp_path):
    """A real subprocess is SIGKILLed mid-run; the rerun resumes and ends where an unbroken run does."""
    data = tmp_path / "prompts.jsonl"
    tiny_prompts().save(data)
    total = 12
    config = tiny_config(tmp_path, data=str(data), epochs=3, save_every=3, keep_checkpoints=2,
                         output_dir=str(tmp_path / "killed"))
    (tmp_path / "c.yaml").write_text(config.to_yaml())
    cmd = [sys.executable, "-m", "mlcwb", "train", str(tmp_path / "c.yaml")]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    log = Path(config.output_dir) / "log.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if latest_checkpoint(config.output_dir) is not None:
            break
        time.sleep(0.02)
    assert proc.poll() is None, f"the run ended before it could be killed: {proc.stderr.read()[-2000:]}"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done = len(read_jsonl(log, skip_partial_last=True))
    assert 3 <= done < total
    rerun = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    rows = read_jsonl(log)
    assert [r["step"] for r in rows] == list(range(1, total + 1))
    assert json.loads((Path(config.output_dir) / "summary.json").read_text())["resumed_from"] >= 3

    unbroken = train(config.replace(output_dir=str(tmp_path / "unbroken")))
    resumed = load_file(Path(config.output_dir) / "final" / "model.safetensors")
    for name, value in load_file(unbroken.final_dir / "model.safetensors").items():
        assert torch.allclose(resumed[name], value, atol=1e-6, rtol=0), name
    assert torch.allclose(load_extractor(Path(config.output_dir) / "final").proj.weight,
                          unbroken.extractor.proj.weight, atol=1e-6, rtol=0)


@pytest.mark.slow
def test_resume_refuses_a_different_run(tmp_path):
    config = tiny_config(tmp_path, max_steps=2, save_every=1)
    train(config, prompts=tiny_prompts())
    with pytest.raises(TrainingError, match="different"):
        train(config.replace(seed=1, max_steps=3), prompts=tiny_prompts())
    assert latest_checkpoint(config.output_dir).name == "step-00000001"


# ------------------------------------------------------------------ trl bridge

@pytest.fixture
def fresh_accelerate_state():
    """trl's trainers leave a process-wide AcceleratorState behind (bf16 where the CPU supports
    it), which a later ``Accelerator(mixed_precision="no")`` in the same process may not change:
    drop it after each trl run so the tests after it start clean."""
    yield
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)


def test_mixin_adds_lambda_times_mlc_to_the_parent_loss(tiny_llama):
    from types import SimpleNamespace

    from mlcwb.trl_bridge import MLCTrainerMixin

    model, tok = tiny_llama

    class Parent:
        def __init__(self, model, args, processing_class):
            self.model, self.args, self.processing_class = model, args, processing_class
            self.state = SimpleNamespace(global_step=0)
            self.accelerator = SimpleNamespace(unwrap_model=lambda m: m)

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            return torch.tensor(1.5)

    class Trainer(MLCTrainerMixin, Parent):
        pass

    groups = [["hello", "hallo", "bonjour"], ["bye", "tschuess", "au revoir"]]
    trainer = Trainer(model, SimpleNamespace(seed=0, learning_rate=1e-3), tok,
                      mlc_config=MLCConfig(batch_size=2, extractor_dim=8, lam=0.5), mlc_prompts=groups)
    model.train()
    loss = trainer.compute_loss(model, {})
    term = trainer.mlc_term(model, 0)
    assert loss.item() == pytest.approx(1.5 + 0.5 * term.item(), abs=1e-5)
    trainer.state.global_step = 1  # aux_every=2: no term on odd steps
    assert trainer.compute_loss(model, {}).item() == pytest.approx(1.5)
    with pytest.raises(ConfigError):
        Trainer(model, SimpleNamespace(seed=0), tok, mlc_prompts=[["only one"]])


@pytest.mark.parametrize("variant", ["official", "contrastive"])
def test_trainer_and_trl_bridge_compute_one_mlc_term(tiny_llama, variant):
    """Same model, batch and config (language weights, length buckets) -> the same loss."""
    from types import SimpleNamespace

    from mlcwb.mlc import language_weights, mlc_term, use_buckets
    from mlcwb.trl_bridge import MLCTrainerMixin

    model, tok = tiny_llama
    langs = ["en", "de", "fr"]
    groups = [["hello there", "hallo du da drüben", "bonjour"], ["bye", "tschüss", "au revoir à tous"]]
    cfg = MLCConfig(batch_size=2, extractor_dim=8, lang_weights={"de": 2.0, "fr": 0.5},
                    buckets="length", variant=variant)

    module = TrainModule(model, Extractor(64, 8, "linear", seed=0), cfg.layer, cfg.pooling,
                         bucketed=use_buckets(cfg, torch.device("cpu")))
    out = module(mlc=encode_mlc(tok, groups, True))
    from_trainer = mlc_term(out["z"], len(langs), cfg, language_weights(langs, cfg.lang_weights))

    class Parent:
        def __init__(self, model, args, processing_class):
            self.model, self.args, self.processing_class = model, args, processing_class
            self.state = SimpleNamespace(global_step=0)
            self.accelerator = SimpleNamespace(unwrap_model=lambda m: m)

    bridge = type("Bridge", (MLCTrainerMixin, Parent), {})(
        model, SimpleNamespace(seed=0, learning_rate=1e-3), tok, mlc_config=cfg,
        mlc_prompts=groups, mlc_langs=langs)
    from_bridge = bridge.mlc_term(model, 0)
    assert from_bridge.item() == pytest.approx(from_trainer.item(), abs=1e-6)
    unweighted = mlc_term(out["z"], len(langs), cfg)
    assert abs(unweighted.item() - from_trainer.item()) > 1e-4  # the weights do enter both
    with pytest.raises(ConfigError, match="mlc_langs"):
        type("Bridge", (MLCTrainerMixin, Parent), {})(
            model, SimpleNamespace(seed=0, learning_rate=1e-3), tok, mlc_config=cfg, mlc_prompts=groups)


@pytest.mark.slow
def test_trl_sft_trainer_with_mlc_runs_two_steps(tmp_path, tiny_llama, fresh_accelerate_state):
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    from mlcwb.trl_bridge import mlc_trainer

    model, tok = tiny_llama
    rows = [{"prompt": [{"role": "user", "content": f"q{i}"}],
             "completion": [{"role": "assistant", "content": f"a{i}"}]} for i in range(4)]
    args = SFTConfig(output_dir=str(tmp_path), max_steps=2, per_device_train_batch_size=2,
                     report_to=[], logging_steps=1, save_strategy="no", use_cpu=True,
                     disable_tqdm=True, learning_rate=1e-3)
    trainer = mlc_trainer(SFTTrainer)(
        model=model, args=args, train_dataset=Dataset.from_list(rows), processing_class=tok,
        mlc_config=MLCConfig(batch_size=2, extractor_dim=8, aux_every=1),
        mlc_prompts=[["hello", "hallo"], ["bye", "tschuess"]])
    before = trainer.mlc_extractor.proj.weight.detach().clone()
    trainer.train()
    logged = [r for r in trainer.state.log_history if "loss" in r]
    assert len(logged) == 2 and all(r["mlc_loss"] > 0 for r in logged)
    assert not torch.equal(trainer.mlc_extractor.proj.weight, before), "the extractor is optimised"


# ------------------------------------------------------------------ preference losses

@pytest.mark.slow
@pytest.mark.parametrize("pref_loss", ["sigmoid", "ipo", "hinge", "orpo", "simpo"])
def test_every_preference_loss_trains_and_only_reference_losses_compute_a_reference(
        tmp_path, monkeypatch, pref_loss):
    import mlcwb.train as train_module

    calls = []
    real = train_module._reference_logps
    monkeypatch.setattr(train_module, "_reference_logps",
                        lambda *a, **k: calls.append(1) or real(*a, **k))
    config = tiny_config(tmp_path, pref_loss=pref_loss, max_steps=2, mlc=None,
                         beta=2.0 if pref_loss == "simpo" else 0.1)
    result = train(config, prompts=tiny_prompts())
    assert bool(calls) == (pref_loss in ("sigmoid", "ipo", "hinge"))
    assert all(math.isfinite(r["align_loss"]) and "reward_acc" in r for r in result.log)
    assert ("nll" in result.log[0]) == (pref_loss == "orpo")


def test_a_failed_checkpoint_write_leaves_nothing_and_a_killed_ones_leftovers_go(tmp_path, monkeypatch):
    """A full disk mid-save leaves no half checkpoint; what a killed run was writing is removed
    by the next save."""
    import mlcwb.checkpoints as checkpoints

    config = tiny_config(tmp_path, max_steps=2, save_every=1)
    steps = Path(config.output_dir) / "steps"
    leftover = steps / ".step-00000001.tmp-999999"
    leftover.mkdir(parents=True)
    (leftover / "model.safetensors").write_bytes(b"half")
    real_write = checkpoints._write_checkpoint

    def full_disk(tmp, *args, **kwargs):
        real_write(tmp, *args, **kwargs)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(checkpoints, "_write_checkpoint", full_disk)
    with pytest.raises(OSError, match="No space left"):
        train(config, prompts=tiny_prompts())
    assert list(steps.iterdir()) == [], "the killed run's leftover and the failed write are both gone"
    assert latest_checkpoint(config.output_dir) is None


@pytest.mark.slow
def test_a_checkpoint_from_before_a_config_key_existed_still_resumes(tmp_path):
    config = tiny_config(tmp_path, max_steps=2, save_every=1)
    train(config, prompts=tiny_prompts())
    ckpt = latest_checkpoint(config.output_dir)
    state = torch.load(ckpt / "training_state.pt", weights_only=True)
    for key in ("pref_loss", "simpo_gamma", "orpo_lambda"):
        del state["config"][key]
    for key in ("centre", "layer"):  # MLC settings added later
        del state["config"]["mlc"][key]
    for old, new in RENAMED.items():  # and keys saved under their old names (and places)
        section, _, key = new.rpartition(".")
        state["config"][old] = (state["config"][section] if section else state["config"]).pop(key)
    torch.save(state, ckpt / "training_state.pt")
    assert train(config.replace(max_steps=3), prompts=tiny_prompts()).resumed_from == 1
    with pytest.raises(TrainingError, match="pref_loss"):
        train(config.replace(max_steps=4, pref_loss="ipo"), prompts=tiny_prompts())


def test_a_dpo_plus_mlc_step_logs_the_reward_margin_and_the_collapse_margin_apart(tmp_path):
    """Both the preference loss and the collapse watch report a margin: neither may hide the other."""
    config = tiny_config(tmp_path, align="dpo", max_steps=1,
                         mlc=MLCConfig(batch_size=2, extractor_dim=16, aux_every=1))
    row = train(config, prompts=tiny_prompts()).log[0]
    assert {"reward_margin", "margin", "pair_cos", "prompt_cos", "mlc_loss", "align_loss"} <= set(row)
    assert row["margin"] == pytest.approx(row["pair_cos"] - row["prompt_cos"])
