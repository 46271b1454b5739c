"""RL with the MLC term: trl's GRPOTrainer through the bridge, and the refusal reward."""

from __future__ import annotations

import pytest
import torch

from mlcwb.judge_markers import RefusalJudge
from mlcwb.mlc import MLCConfig
from mlcwb.trl_bridge import refusal_reward
from mlcwb.verdicts import Verdict

REFUSAL = "I'm sorry, but I can't help with that."
ANSWER = "Sure: mix flour, water and salt, then bake it for forty minutes."


def test_refusal_reward_pays_for_the_right_behaviour_per_prompt():
    reward = refusal_reward(RefusalJudge())
    assert reward.__name__ == "refusal_reward"
    texts = (REFUSAL, ANSWER, REFUSAL, ANSWER, "")
    completions = [[{"role": "assistant", "content": text}] for text in texts]
    prompts = [[{"role": "user", "content": "q"}]] * 5
    got = reward(prompts=prompts, completions=completions, harmful=[True, True, False, False, True],
                 completion_ids=None, trainer_state=None)
    assert got == [1.0, -1.0, -1.0, 1.0, -1.0]  # an empty output is no refusal
    assert refusal_reward()(prompts=["q"], completions=[REFUSAL], harmful=[True]) == [1.0]


def test_an_unparsed_verdict_is_left_out():
    class Unsure:
        name = "unsure"

        def judge(self, responses, langs=None, prompts=None):
            assert prompts == ["q"]
            return [Verdict(None, "unparsed", "?", self.name)]

    assert refusal_reward(Unsure())(prompts=["q"], completions=["x"], harmful=[False]) == [None]


@pytest.fixture
def fresh_accelerate_state():
    """trl leaves a process-wide AcceleratorState (bf16 where the CPU has it) that a later
    ``Accelerator(mixed_precision="no")`` may not change: drop it after the run."""
    yield
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)


@pytest.mark.slow
def test_grpo_trainer_with_mlc_runs_two_steps(tmp_path, tiny_llama, fresh_accelerate_state):
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    from mlcwb.trl_bridge import mlc_trainer

    model, tok = tiny_llama
    rows = [{"prompt": [{"role": "user", "content": f"question {i}"}], "harmful": i % 2 == 0}
            for i in range(4)]
    args = GRPOConfig(output_dir=str(tmp_path), max_steps=2, per_device_train_batch_size=2,
                      num_generations=2, max_completion_length=4, report_to=[], logging_steps=1,
                      save_strategy="no", use_cpu=True, bf16=False, disable_tqdm=True,
                      learning_rate=1e-3, seed=0)
    trainer = mlc_trainer(GRPOTrainer)(
        model=model, reward_funcs=refusal_reward(RefusalJudge()), args=args,
        train_dataset=Dataset.from_list(rows), processing_class=tok,
        mlc_config=MLCConfig(batch_size=2, extractor_dim=8, aux_every=1),
        mlc_prompts=[["hello", "hallo"], ["bye", "tschuess"]])
    before = trainer.mlc_extractor.proj.weight.detach().clone()
    trainer.train()
    logged = [r for r in trainer.state.log_history if "loss" in r]
    assert len(logged) == 2 and all(r["mlc_loss"] > 0 for r in logged), logged
    assert all("rewards/refusal_reward/mean" in r for r in logged), logged[0].keys()
    assert not torch.equal(trainer.mlc_extractor.proj.weight, before), "the extractor is optimised"
