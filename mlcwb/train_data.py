"""Training data: alignment examples and MLC prompt groups from a PromptSet, as token ids and rows.

The trainer's data in a module of its own, below the trainer: ``mlcwb.seq2seq`` (which collates
``AlignExample`` rows for encoder-decoders) and ``mlcwb.trl_bridge`` (which encodes MLC prompts
exactly as the trainer does) need this and nothing of the loop, so they import it without pulling
in accelerate, the checkpoints or ``mlcwb.train`` (and without an import cycle through it). Which
row layout a model's forward reads is ``mlcwb.train_module.collator``'s choice.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from mlcwb.errors import ConfigError, DataError, LanguageError
from mlcwb.extract import encode_with_content
from mlcwb.models import encode_prompts
from mlcwb.train_config import REFUSAL, TrainConfig

if TYPE_CHECKING:
    from mlcwb.data import PromptSet

log = logging.getLogger(__name__)


@dataclass
class AlignExample:
    """Token ids of one alignment example; ``rejected_ids`` only for DPO."""

    prompt_ids: list[int]
    chosen_ids: list[int]
    rejected_ids: list[int] | None = None


@dataclass
class TrainData:
    align: list[AlignExample]
    mlc_texts: list[list[str]]  # [prompt][language], languages in config.mlc_languages order
    langs: list[str]
    skipped: dict[str, int] = field(default_factory=dict)
    mlc_prompts: PromptSet | None = None  # the prompts behind mlc_texts (labels, layer choice)

    @property
    def mlc_harmful(self) -> list[bool]:
        """Each MLC prompt's label, in ``mlc_texts`` order (the label-aware term contrasts them)."""
        return [bool(p.harmful) for p in self.mlc_prompts] if self.mlc_prompts is not None else []


def load_prompts(config: TrainConfig) -> Any:
    """The PromptSet named by ``config.data``: ``"corpus"`` or a PromptSet JSONL path."""
    from mlcwb.data import PromptSet, load_corpus

    if config.data == "corpus":
        return load_corpus()
    path = Path(config.data)
    if not path.is_file():
        raise ConfigError(f"data: {config.data!r} is neither 'corpus' nor an existing PromptSet "
                          f"JSONL file.")
    return PromptSet.load(path)


def prepare_data(config: TrainConfig, prompts: PromptSet, tokenizer: Any) -> TrainData:
    """Alignment examples (English targets) and MLC prompt groups from a PromptSet.

    DPO pairs: chosen = ``response``, rejected = ``rejected`` for harmful prompts; benign prompts
    have no unsafe answer, so with ``benign_rejected="refusal"`` their rejected answer is a
    refusal: the pair rewards answering a harmless question over refusing it, which pushes
    against the over-refusal an English-only safety pass causes (docs/design.md, "Training and
    checkpoints").
    """
    prompts = prompts.select(split=config.split)
    if len(prompts) == 0:
        raise DataError(f"No prompts in split {config.split!r} of {prompts.name}.")
    needed = list(dict.fromkeys([*(config.mlc_languages if config.uses_mlc else []),
                                 *(config.align_languages if config.align != "none" else [])]))
    missing = [lang for lang in needed if lang not in prompts.languages]
    if missing:
        raise LanguageError(
            f"Languages {missing} are missing from {prompts.name} (every prompt has "
            f"{prompts.languages}). Translate them first (mlcwb.translate) or remove them from "
            f"langs/align_langs.")
    if config.train_prompts and config.train_prompts < len(prompts):
        keep = set(random.Random(config.seed).sample(prompts.ids, config.train_prompts))
        prompts = prompts.select(ids=[i for i in prompts.ids if i in keep])
    examples, skipped = _align_examples(config, prompts, tokenizer)
    mlc_langs = list(config.mlc_languages) if config.uses_mlc else []
    mlc_texts = [[p.text[lang] for lang in mlc_langs] for p in prompts] if mlc_langs else []
    return TrainData(examples, mlc_texts, mlc_langs, skipped, prompts if mlc_langs else None)


def _align_examples(config: TrainConfig, prompts: PromptSet,
                    tokenizer: Any) -> tuple[list[AlignExample], dict[str, int]]:
    if config.align == "none":
        return [], {}
    eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    skipped = {"no_response": 0, "no_rejected": 0, "too_long": 0}
    examples: list[AlignExample] = []

    def answer(text: str) -> list[int]:
        return tokenizer(text, add_special_tokens=False)["input_ids"] + eos

    for lang in config.align_languages:
        for p in prompts:
            if not p.response:
                skipped["no_response"] += 1
                continue
            rejected = None
            if config.align == "dpo":
                rejected = p.rejected or (REFUSAL if not p.harmful and
                                          config.benign_rejected == "refusal" else None)
                if not rejected:
                    skipped["no_rejected"] += 1
                    continue
            ids = encode_prompts(tokenizer, [p.text[lang]], config.chat_template)["input_ids"][0]
            room = config.max_length - len(ids)
            if room < 2:
                skipped["too_long"] += 1
                continue
            examples.append(AlignExample(ids.tolist(), answer(p.response)[:room],
                                         answer(rejected)[:room] if rejected else None))
    if not examples:
        raise DataError(f"No alignment examples: every prompt was skipped ({skipped}). "
                        f"{config.align.upper()} needs prompts with a response"
                        f"{' and a rejected answer' if config.align == 'dpo' else ''}.")
    if any(skipped.values()):
        log.info("alignment examples: %d; skipped %s", len(examples), skipped)
    return examples, skipped


def collate_align(examples: Sequence[AlignExample], pad_id: int, dpo: bool) -> dict[str, Any]:
    """Left-padded prompt+answer rows (DPO: all chosen rows, then all rejected rows).

    ``keep`` is the number of final positions whose logits are needed: every answer token is
    predicted from the position before it, and answers end every row.
    """
    answers = [e.chosen_ids for e in examples] + ([e.rejected_ids for e in examples] if dpo else [])
    heads = [e.prompt_ids for e in examples] * (2 if dpo else 1)
    width = max(len(h) + len(a) for h, a in zip(heads, answers))
    ids = torch.full((len(answers), width), pad_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    response = torch.zeros_like(ids)
    for row, (head, ans) in enumerate(zip(heads, answers)):
        seq = head + ans
        ids[row, width - len(seq):] = torch.tensor(seq)
        mask[row, width - len(seq):] = 1
        response[row, width - len(ans):] = 1
    return {"input_ids": ids, "attention_mask": mask, "response_mask": response,
            "keep": max(len(a) for a in answers) + 1}


def encode_mlc(tokenizer: Any, groups: Sequence[Sequence[str]], chat_template: bool) -> dict[str, Tensor]:
    """Prompt-only rows (prompt-major: all languages of prompt 0, then prompt 1, ...).

    Right padding: with left padding a pad query has no key it may attend to, fused CUDA attention
    returns NaN for that row, and NaN x 0 poisons the backward pass even though pooling never
    reads the row. Pooling is mask-aware, so the pooled states are the same either way.
    """
    enc = encode_with_content(tokenizer, [t for group in groups for t in group], chat_template,
                              padding_side="right")
    return {k: enc[k] for k in ("input_ids", "attention_mask", "content_mask")}



__all__ = ["AlignExample", "TrainData", "collate_align", "encode_mlc", "load_prompts", "prepare_data"]
