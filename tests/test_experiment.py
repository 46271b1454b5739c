"""The experiment's arms: derived from one base config, resumed, reused or restarted on rerun."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from mlcwb.errors import ConfigError
from mlcwb.experiment import ARMS, arm_configs, arm_settings, train_arm, train_arms
from mlcwb.io import read_jsonl, write_jsonl
from mlcwb.mlc import MLCConfig
from mlcwb.train import PHASE_END, train
from mlcwb.train_config import LoraSettings
from tests.test_train import tiny_config, tiny_prompts


def test_arms_differ_only_in_their_objective(tmp_path):
    base = tiny_config(tmp_path, align="dpo", pref_loss="simpo")
    mlc = MLCConfig(batch_size=2, extractor_dim=16, aux_every=2, variant="contrastive")
    configs = arm_configs(base, mlc, ARMS, mlc_only_lr=5e-4)
    assert configs["align"].mlc is None and configs["align"].pref_loss == "simpo"
    assert configs["mlc"].mlc == mlc and configs["mlc"].schedule == "joint"
    assert configs["mlc_seq"].schedule == "sequential"
    only = configs["mlc_only"]
    assert only.align == "none" and only.mlc.aux_every == 1 and only.lr == 5e-4
    assert only.mlc.variant == "contrastive"
    for name, cfg in configs.items():
        assert Path(cfg.output_dir) == Path(base.output_dir) / name
        assert (cfg.seed, cfg.mlc_languages, cfg.train_prompts) == (base.seed, base.mlc_languages, base.train_prompts)
    with pytest.raises(ConfigError, match="Unknown arms"):
        arm_configs(base, mlc, ["dpo_plus"])


def test_an_mlc_arm_without_the_mlc_term_is_an_error(tmp_path):
    base = tiny_config(tmp_path, align="sft")
    with pytest.raises(ConfigError, match="lam is 0"):
        arm_configs(base, MLCConfig(lam=0), ["align", "mlc"])
    assert list(arm_configs(base, MLCConfig(lam=0), ["align"])) == ["align"]


def test_arm_settings_name_everything_that_shaped_an_arm(tmp_path):
    base = tiny_config(tmp_path, align="dpo", pref_loss="simpo", lr=3e-4, train_prompts=6)
    mlc = MLCConfig(lam=0.5, tau=0.1, batch_size=2, variant="label_contrastive", centre="running", layer=2)
    settings = arm_settings(arm_configs(base, mlc, ["align", "mlc", "mlc_only"], mlc_only_lr=1e-5))
    assert settings["align"]["lr"] == 3e-4 and settings["align"]["pref_loss"] == "simpo"
    assert "mlc_lam" not in settings["align"] and settings["align"]["mlc_languages"] == []
    joint, alone = settings["mlc"], settings["mlc_only"]
    assert (joint["mlc_lam"], joint["mlc_tau"], joint["mlc_variant"], joint["mlc_centre"], joint["mlc_layer"]) == (
        0.5, 0.1, "label_contrastive", "running", 2)
    assert joint["mlc_languages"] == base.mlc_languages and joint["train_prompts"] == 6 and joint["seed"] == base.seed
    assert alone["align"] == "none" and alone["lr"] == 1e-5 and alone["mlc_aux_every"] == 1


@pytest.mark.slow
def test_rerun_reuses_finished_arms_and_restarts_changed_ones(tmp_path):
    base = tiny_config(tmp_path, align="sft", max_steps=2, save_every=1)
    configs = arm_configs(base, MLCConfig(batch_size=2, extractor_dim=16), ["align", "mlc_only"])
    first = train_arms(configs, tiny_prompts())
    for arm in first.values():  # a finished arm keeps final/, not its resume points
        assert sorted(p.name for p in arm.final_dir.parent.iterdir()) == [
            "config.yaml", "final", "log.jsonl", "summary.json"]
    stamp = (first["align"].final_dir / "model.safetensors").stat().st_mtime_ns
    again = train_arms(configs, tiny_prompts())
    assert again["align"].reused and again["mlc_only"].reused
    assert (again["align"].final_dir / "model.safetensors").stat().st_mtime_ns == stamp
    assert [r["step"] for r in again["align"].log] == [1, 2]
    changed = train_arm("align", configs["align"].replace(lr=5e-4), tiny_prompts())
    assert not changed.reused and changed.steps == 2
    assert (changed.final_dir / "model.safetensors").stat().st_mtime_ns != stamp


@pytest.mark.slow
def test_interrupted_arm_resumes_to_the_weights_of_an_unbroken_run(tmp_path):
    """What a kill after step 2 of 4 leaves (checkpoints up to step 2, a longer log, no final)
    is resumed by the rerun to the same weights as a run that was never stopped."""
    mlc = MLCConfig(batch_size=2, extractor_dim=16, aux_every=1)
    broken = arm_configs(tiny_config(tmp_path / "a", align="sft", save_every=1, keep_checkpoints=4,
                                     max_steps=4), mlc, ["mlc"])["mlc"]
    unbroken = arm_configs(tiny_config(tmp_path / "b", align="sft", max_steps=4), mlc, ["mlc"])["mlc"]
    train(broken, prompts=tiny_prompts())  # as train_arm runs it, minus the end (a killed run)
    out = Path(broken.output_dir)
    for step_dir in sorted((out / "steps").iterdir())[2:]:
        shutil.rmtree(step_dir)
    shutil.rmtree(out / "final")
    (out / "summary.json").unlink()
    write_jsonl(out / "log.jsonl", read_jsonl(out / "log.jsonl")[:3])  # step 3 logged, not saved
    resumed = train_arm("mlc", broken, tiny_prompts())
    reference = train_arm("mlc", unbroken, tiny_prompts())
    assert resumed.resumed_from == 2 and not resumed.reused
    assert [r["step"] for r in read_jsonl(out / "log.jsonl")] == [1, 2, 3, 4]
    want = load_file(reference.final_dir / "model.safetensors")
    for name, value in load_file(resumed.final_dir / "model.safetensors").items():
        assert torch.allclose(value, want[name], atol=1e-6, rtol=0), name


def test_the_english_only_arm_is_the_sequential_arms_alignment_phase(tmp_path, monkeypatch):
    """Alignment alone and the sequential arm's alignment phase are one run: with both arms the
    experiment trains it once, and the arm it takes has the weights alignment alone ends with."""
    import mlcwb.train as train_module

    mlc = MLCConfig(batch_size=2, extractor_dim=16, aux_every=1)
    both = arm_configs(tiny_config(tmp_path / "both", align="sft"), mlc, ["align", "mlc_seq"])
    alone = arm_configs(tiny_config(tmp_path / "alone", align="sft"), mlc, ["align"])
    calls, real = [], train_module.train
    monkeypatch.setattr(train_module, "train", lambda config, **kw: calls.append(config.schedule) or real(config, **kw))
    derived, direct = train_arms(both, tiny_prompts()), train_arms(alone, tiny_prompts())
    assert calls == ["sequential", "joint"], "with both arms only the sequential one trains"
    assert list(derived) == ["align", "mlc_seq"] and derived["align"].derived_from == "mlc_seq"
    assert direct["align"].derived_from is None and derived["align"].steps == direct["align"].steps == 4
    ours, theirs = (load_file(r["align"].final_dir / "model.safetensors") for r in (derived, direct))
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)
    assert [r["align_loss"] for r in derived["align"].log] == [r["align_loss"] for r in direct["align"].log]
    assert not (Path(both["mlc_seq"].output_dir) / PHASE_END).exists(), "the phase's copy is moved, not kept"
    again = train_arms(both, tiny_prompts())
    assert again["align"].reused and again["mlc_seq"].reused and again["align"].derived_from == "mlc_seq"
    assert len(calls) == 2
    lora = tiny_config(tmp_path / "lora", align="sft", lora=LoraSettings())
    assert not arm_configs(lora, mlc, ["align", "mlc_seq"])["mlc_seq"].keep_phase_end
