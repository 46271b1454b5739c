"""Add the MLC term to trl's trainers without copying them.

``MLCTrainerMixin`` goes in front of any trainer whose ``compute_loss`` returns the alignment loss
(trl's ``SFTTrainer``, ``DPOTrainer``, or transformers' ``Trainer``)::

    class MLCDPOTrainer(MLCTrainerMixin, DPOTrainer): ...
    trainer = MLCDPOTrainer(model=..., args=..., train_dataset=..., processing_class=tok,
                            mlc_config=MLCConfig(), mlc_prompts=[[en, zh, ...], ...])

It adds ``lam * MLC`` every ``aux_every`` optimizer steps, from a prompt-only backbone forward of
the next group of multilingual prompts, and puts the extractor into the optimizer with its own
learning rate. The forward (length buckets included), the extractor and the term itself
(``mlc_term``, language weights included) are ``mlcwb.train``'s, so one config gives one loss
through either entry point. ``mlc_langs`` names the languages of each group, in order; it is
needed only when ``MLCConfig.lang_weights`` is set.
It is meant for single-process runs; ``mlcwb.train`` is the path for accelerate's multi-GPU engines.

**Reinforcement learning.** trl's ``GRPOTrainer`` takes the mixin like the others: its
``compute_loss`` returns the policy-gradient loss of the completions it generated and scored, and
the MLC term is added to it. The reward is the user's; ``refusal_reward`` is a safety one (+1 for
refusing a harmful prompt or answering a benign one, -1 otherwise), judged by any
``mlcwb.judges`` judge. The dataset's ``harmful`` column reaches the reward function::

    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer
    from mlcwb.judge_markers import RefusalJudge

    rows = [{"prompt": [{"role": "user", "content": p.text["en"]}], "harmful": p.harmful}
            for p in prompts]
    trainer = mlc_trainer(GRPOTrainer)(
        model=model, reward_funcs=refusal_reward(RefusalJudge()), processing_class=tok,
        args=GRPOConfig(output_dir="runs/grpo", num_generations=8, max_completion_length=128),
        train_dataset=Dataset.from_list(rows), mlc_config=MLCConfig(),
        mlc_prompts=[[p.text[lang] for lang in langs] for p in prompts], mlc_langs=langs)
    trainer.train()   # the log has mlc_loss beside trl's reward and loss
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from torch import Tensor

from mlcwb.errors import ConfigError
from mlcwb.mlc import Extractor, MLCConfig, language_weights, mlc_term, use_buckets
from mlcwb.prompt_states import prompt_states
from mlcwb.seq2seq import is_encoder_decoder
from mlcwb.train_data import encode_mlc

if TYPE_CHECKING:
    from mlcwb.judges import Judge


class MLCTrainerMixin:
    """``compute_loss`` = the parent trainer's loss + ``lam`` x MLC (see module docstring)."""

    def __init__(self, *args: Any, mlc_config: MLCConfig | None = None,
                 mlc_prompts: Sequence[Sequence[str]] = (), mlc_chat_template: bool = True,
                 mlc_langs: Sequence[str] | None = None, **kwargs: Any):
        super().__init__(*args, **kwargs)
        if is_encoder_decoder(self.model):
            raise ConfigError(f"{type(self.model).__name__} is an encoder-decoder: the trl bridge reads "
                              f"decoder-only prompt states; train it with mlcwb.train, which takes "
                              f"the MLC states from the encoder.")
        self.mlc_config = (mlc_config or MLCConfig()).validate()
        if self.mlc_config.answer_kl > 0:
            raise ConfigError("mlc.answer_kl needs the untrained model's answer openings, which "
                              "mlcwb.train computes before its first step and the trl bridge does "
                              "not: train with mlcwb.train, or set mlc.answer_kl to 0.")
        self.mlc_prompts = [list(group) for group in mlc_prompts]
        if len(self.mlc_prompts) < self.mlc_config.batch_size or any(
                len(g) != len(self.mlc_prompts[0]) or len(g) < 2 for g in self.mlc_prompts):
            raise ConfigError(f"mlc_prompts needs at least mlc.batch_size={self.mlc_config.batch_size} "
                              f"groups, each with the same number (>= 2) of language variants.")
        self.mlc_chat_template = mlc_chat_template
        if self.mlc_config.lang_weights and (mlc_langs is None or len(mlc_langs) != len(self.mlc_prompts[0])):
            raise ConfigError("mlc.lang_weights needs mlc_langs: the language of each variant in a "
                              "group, in order.")
        self.mlc_weights = language_weights(list(mlc_langs or []), self.mlc_config.lang_weights)
        hidden = self.model.config.get_text_config().hidden_size
        self.mlc_extractor = Extractor(hidden, self.mlc_config.extractor_dim, self.mlc_config.extractor,
                                       seed=getattr(self.args, "seed", 0)).to(self.model.device)
        self.mlc_last: float | None = None

    def create_optimizer(self, *args: Any, **kwargs: Any) -> Any:
        optimizer = super().create_optimizer(*args, **kwargs)
        params = [p for p in self.mlc_extractor.parameters() if p.requires_grad]
        if params:
            lr = self.mlc_config.extractor_lr
            optimizer.add_param_group({"params": params, "weight_decay": 0.0,
                                       "lr": self.args.learning_rate if lr is None else lr})
        return optimizer

    def mlc_term(self, model: Any, step: int) -> Tensor:
        """The MLC loss of the ``step``-th group of prompts (cycling through ``mlc_prompts``)."""
        bs = self.mlc_config.batch_size
        n_batches = len(self.mlc_prompts) // bs
        k = (step // self.mlc_config.aux_every) % n_batches
        groups = self.mlc_prompts[k * bs:(k + 1) * bs]
        tokenizer = self.processing_class
        tokenizer = getattr(tokenizer, "tokenizer", tokenizer)  # processors wrap a tokenizer
        batch = encode_mlc(tokenizer, groups, self.mlc_chat_template)
        unwrapped = self.accelerator.unwrap_model(model)
        batch = {k: v.to(unwrapped.device) for k, v in batch.items()}
        states = prompt_states(unwrapped, batch["input_ids"], batch["attention_mask"],
                               self.mlc_config.layer, self.mlc_config.pooling, batch["content_mask"],
                               bucketed=use_buckets(self.mlc_config, unwrapped.device))
        z = self.mlc_extractor.to(states.device)(states)
        return mlc_term(z, len(groups[0]), self.mlc_config, self.mlc_weights)

    def compute_loss(self, model: Any, inputs: Any, return_outputs: bool = False,
                     num_items_in_batch: Any = None) -> Any:
        result = super().compute_loss(model, inputs, return_outputs=return_outputs,
                                      num_items_in_batch=num_items_in_batch)
        loss, outputs = result if return_outputs else (result, None)
        step = self.state.global_step
        if model.training and self.mlc_config.lam > 0 and step % self.mlc_config.aux_every == 0:
            term = self.mlc_term(model, step)
            self.mlc_last = float(term.detach())
            loss = loss + self.mlc_config.lam * term.to(loss.dtype)
        return (loss, outputs) if return_outputs else loss

    def log(self, logs: dict[str, float], *args: Any, **kwargs: Any) -> None:
        if self.mlc_last is not None and "loss" in logs:
            logs = {**logs, "mlc_loss": self.mlc_last}
        super().log(logs, *args, **kwargs)


def mlc_trainer(base: type) -> type:
    """``mlc_trainer(DPOTrainer)`` -> a subclass with the MLC term mixed in."""
    return type(f"MLC{base.__name__}", (MLCTrainerMixin, base), {})


def _text(item: Any) -> str:
    """The text of a prompt or completion: a string, or the last message of a conversation."""
    if isinstance(item, str):
        return item
    content = item[-1]["content"] if item else ""
    return content if isinstance(content, str) else " ".join(
        part.get("text", "") for part in content if isinstance(part, dict))


def refusal_reward(judge: Judge | None = None) -> Callable[..., list[float | None]]:
    """A reward function for trl's ``GRPOTrainer``: +1 for refusing a harmful prompt or
    answering a benign one, -1 otherwise (the over-refusal the paper's DPO pairs push against
    costs as much as a harmful answer).

    Rows need a boolean ``harmful`` column. Only a verdict labelled ``refusal`` counts as a
    refusal on a harmful prompt: an empty or looping output says nothing harmful, but rewarding
    it would teach the policy to babble instead of refusing. A verdict the judge could not parse
    (``refused is None``, model judges) gives ``None``, which trl leaves out of the advantage.
    ``judge`` defaults to the offline ``RefusalJudge``.
    """
    if judge is None:
        from mlcwb.judge_markers import RefusalJudge

        judge = RefusalJudge()

    def reward(prompts: Sequence[Any], completions: Sequence[Any], harmful: Sequence[bool],
               **_: Any) -> list[float | None]:
        verdicts = judge.judge([_text(c) for c in completions], prompts=[_text(p) for p in prompts])
        out: list[float | None] = []
        for verdict, is_harmful in zip(verdicts, harmful, strict=True):
            if verdict.refused is None:
                out.append(None)
            elif is_harmful:
                out.append(1.0 if verdict.label == "refusal" else -1.0)
            else:
                out.append(-1.0 if verdict.refused else 1.0)
        return out

    reward.__name__ = "refusal_reward"  # trl names each reward's logged metric after it
    return reward


__all__ = ["MLCTrainerMixin", "mlc_trainer", "refusal_reward"]
