"""Encoder-decoder models (T5, mT5, mT0, Flan-T5, ...) in training: batches, answer scores, MLC states.

An encoder-decoder reads the prompt and writes the answer with different stacks, so the two halves
of the training loss read different places:

* **alignment losses** score the decoder's answer: the prompt is the encoder's input (with the
  chat template only when the tokenizer has one, as ``mlcwb.models.encode_prompts`` does
  everywhere), the answer ids are the labels, and the decoder sees them shifted right (teacher
  forcing). Answer log-probs come out in the same (sum, length) form as the decoder-only ones,
  so every alignment and preference loss works unchanged.
* **the MLC prompt representation** comes from the encoder (see ``encoder_states`` for why it
  is a mean there rather than the decoder-only models' last token).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from mlcwb.logprobs import masked_token_logps
from mlcwb.prompt_states import prompt_states

if TYPE_CHECKING:
    from mlcwb.train_data import AlignExample


def is_encoder_decoder(model: Any) -> bool:
    """Whether ``model`` (bare or peft-wrapped) reads prompts with an encoder."""
    return bool(getattr(getattr(model, "config", None), "is_encoder_decoder", False))


def _pad_rows(rows: Sequence[Sequence[int]], pad_id: int) -> tuple[Tensor, Tensor]:
    """Right-padded ids and their mask: the encoder attends both ways through the mask, and the
    decoder is causal, so padding after the real tokens changes no real position."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, row in enumerate(rows):
        ids[i, :len(row)] = torch.tensor(row, dtype=torch.long)
        mask[i, :len(row)] = 1
    return ids, mask


def collate_seq2seq(examples: Sequence[AlignExample], pad_id: int, dpo: bool) -> dict[str, Tensor]:
    """Encoder rows (prompts) and label rows (answers); DPO: all chosen rows, then all rejected
    rows, each with its prompt, the layout ``collate_align`` gives decoder-only models."""
    answers = [e.chosen_ids for e in examples] + ([e.rejected_ids for e in examples] if dpo else [])
    prompts = [e.prompt_ids for e in examples] * (2 if dpo else 1)
    input_ids, attention_mask = _pad_rows(prompts, pad_id)
    labels, response_mask = _pad_rows(answers, pad_id)
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels,
            "response_mask": response_mask}


def answer_logps(model: Any, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
    """Sum of answer-token log-probs per row and answer lengths, by teacher forcing.

    The decoder input is the labels shifted right behind the model's start token
    (``prepare_decoder_input_ids_from_labels``, each family's own rule).
    """
    labels = batch["labels"]
    decoder_input_ids = model.prepare_decoder_input_ids_from_labels(labels=labels)
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                   decoder_input_ids=decoder_input_ids, use_cache=False).logits
    return masked_token_logps(logits, labels, batch["response_mask"])


def encoder_states(model: Any, input_ids: Tensor, attention_mask: Tensor, layer: int = -1,
                   pooling: str = "content_mean", content_mask: Tensor | None = None) -> Tensor:
    """Pooled encoder hidden states (N, H) of prompt-only rows; the decoder does not run.

    Why a mean by default: in a decoder-only model the last prompt token is where the answer's
    first token is predicted, so its state is the one the answer depends on (and, under a chat
    template, the same token in every language). An encoder has no such position: attention runs
    both ways, and the decoder reads *every* encoder state through cross-attention. The last token
    is an end-of-sequence or template token whose state says as much about its position as about
    the prompt, so the default (``content_mean``) averages the prompt's own tokens; ``last`` and
    ``content_last`` remain options, to compare with the decoder-only setting.

    ``layer`` counts like the encoder's ``hidden_states`` (0 = embeddings, -1 = after its final
    norm). The forward is the extraction module's prompt forward, which reads the encoder of an
    encoder-decoder, so training and ``extract`` see the same states.
    """
    return prompt_states(model, input_ids, attention_mask, layer, pooling, content_mask)


__all__ = ["answer_logps", "collate_seq2seq", "encoder_states", "is_encoder_decoder"]
