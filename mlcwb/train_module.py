"""What one training step computes: the module accelerate wraps and the alignment losses.

The model-facing half of a step, apart from the loop (``mlcwb.train``): ``TrainModule`` puts the
policy and the MLC extractor behind one forward, so accelerate's wrappers (DDP, FSDP, DeepSpeed)
see one forward per step; ``collator`` gives the batch layout that forward reads (decoder-only or
encoder-decoder); ``response_logps``, ``sft_loss`` and ``align_objective`` turn its output into
the alignment loss. LM-head logits are computed only for answer positions (``logits_to_keep``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mlcwb.answer_kl import opening_logps
from mlcwb.backbone import pool_hidden, position_ids
from mlcwb.errors import ConfigError
from mlcwb.logprobs import masked_token_logps
from mlcwb.mlc import Extractor
from mlcwb.preference import preference_loss
from mlcwb.prompt_states import prompt_states
from mlcwb.seq2seq import answer_logps, collate_seq2seq, is_encoder_decoder
from mlcwb.train_config import TrainConfig
from mlcwb.train_data import AlignExample, collate_align


# ------------------------------------------------------------------------------------ losses

def response_logps(logits: Tensor, batch: dict[str, Any]) -> tuple[Tensor, Tensor]:
    """Sum of answer-token log-probs per row and answer lengths, from the last ``keep`` logits."""
    keep = batch["keep"]
    return masked_token_logps(logits[:, -keep:-1], batch["input_ids"][:, -keep + 1:],
                              batch["response_mask"][:, -keep + 1:])


def sft_loss(logps: Tensor, lengths: Tensor) -> Tensor:
    """Cross-entropy per answer token, averaged over all answer tokens in the batch."""
    return -logps.sum() / lengths.sum().clamp_min(1)


def align_objective(config: TrainConfig, out: dict[str, Tensor], ref_logps: Tensor | None,
                    rows: Tensor) -> tuple[Tensor, dict[str, float]]:
    """The alignment loss of one batch (SFT, or ``config.pref_loss`` for DPO pairs) and the
    numbers to log with it; ``rows`` index the batch's pairs in ``ref_logps``."""
    if config.align != "dpo":
        return sft_loss(out["logps"], out["lengths"]), {}
    return preference_loss(config.pref_loss, out["logps"], out["lengths"],
                           None if ref_logps is None else ref_logps[rows], config.beta,
                           config.simpo_gamma, config.orpo_lambda)


# ------------------------------------------------------------------------------------ module

class TrainModule(nn.Module):
    """Policy model + MLC extractor behind one forward (what accelerate wraps).

    ``forward(align=..., mlc=...)`` returns answer log-probs for the alignment rows and the
    extracted vectors ``z`` (float32) of the MLC rows (and, with ``mlc.answer_kl``, the policy's
    log-probs of the reference's answer openings), from separate passes or, with
    ``batching="official"``, from one padded pass that also computes every position's logits.
    An encoder-decoder scores answers with its decoder and takes MLC states from its encoder
    (``mlcwb.seq2seq``); the official batching is a decoder-only layout and refuses it.
    """

    def __init__(self, model: nn.Module, extractor: Extractor, layer: int = -1,
                 pooling: str = "last", batching: str = "separate", pad_id: int = 0,
                 bucketed: bool = False):
        super().__init__()
        self.model, self.extractor = model, extractor
        self.layer, self.pooling, self.batching, self.pad_id = layer, pooling, batching, pad_id
        self.bucketed = bucketed
        self.encoder_decoder = is_encoder_decoder(model)
        if self.encoder_decoder and batching == "official":
            raise ConfigError("mlc.batching 'official' appends prompts to decoder-only policy rows; "
                              "an encoder-decoder takes its MLC states from the encoder: use "
                              "'separate'.")

    def forward(self, align: dict[str, Any] | None = None,
                mlc: dict[str, Tensor] | None = None) -> dict[str, Tensor]:
        out: dict[str, Tensor] = {}
        states = None
        if align is not None and mlc is not None and self.batching == "official":
            out["logps"], out["lengths"], states = self._official(align, mlc)
        else:
            if align is not None:
                out["logps"], out["lengths"] = self._answer_logps(align)
            if mlc is not None:
                states = self._prompt_states(mlc)
        if states is not None:
            out["states"] = states
            out["z"] = self.extractor(states)
        if mlc is not None and "kl_input_ids" in mlc:
            out["kl_top"], out["kl_rest"] = opening_logps(self.model, mlc["kl_input_ids"],
                                                          mlc["kl_attention_mask"], mlc["kl_top_ids"])
        return out

    def _answer_logps(self, align: dict[str, Any]) -> tuple[Tensor, Tensor]:
        if self.encoder_decoder:
            return answer_logps(self.model, align)
        logits = self.model(input_ids=align["input_ids"], attention_mask=align["attention_mask"],
                            position_ids=position_ids(align["attention_mask"]),
                            logits_to_keep=align["keep"], use_cache=False).logits
        return response_logps(logits, align)

    def _prompt_states(self, mlc: dict[str, Tensor]) -> Tensor:
        """The engine's prompt forward: the decoder stack, or an encoder-decoder's encoder."""
        return prompt_states(self.model, mlc["input_ids"], mlc["attention_mask"], self.layer,
                             self.pooling, mlc.get("content_mask"), bucketed=self.bucketed)

    def _official(self, align: dict[str, Any], mlc: dict[str, Tensor]) -> tuple[Tensor, Tensor, Tensor]:
        """The paper's batching: prompts padded to the policy rows, one pass, all logits."""
        n, width = align["input_ids"].shape[0], max(align["input_ids"].shape[1], mlc["input_ids"].shape[1])

        def pad(t: Tensor, value: int) -> Tensor:
            return F.pad(t, (width - t.shape[1], 0), value=value)

        ids = torch.cat([pad(align["input_ids"], self.pad_id), pad(mlc["input_ids"], self.pad_id)])
        mask = torch.cat([pad(align["attention_mask"], 0), pad(mlc["attention_mask"], 0)])
        result = self.model(input_ids=ids, attention_mask=mask, position_ids=position_ids(mask),
                            output_hidden_states=True, use_cache=False)
        batch = {**align, "input_ids": ids[:n], "response_mask": pad(align["response_mask"], 0)}
        logps, lengths = response_logps(result.logits[:n], batch)
        content = mlc.get("content_mask")
        states = pool_hidden(result.hidden_states[self.layer][n:], mask[n:], self.pooling,
                             content_mask=None if content is None else pad(content, 0))
        return logps, lengths, states


def collator(model: Any, pad_id: int) -> Callable[[Sequence[AlignExample], bool], dict[str, Any]]:
    """``collate(examples, dpo)`` in the layout ``model``'s forward reads: prompt+answer rows for
    a decoder-only model, encoder prompt rows and decoder label rows for an encoder-decoder."""
    collate = collate_seq2seq if is_encoder_decoder(model) else collate_align
    return lambda examples, dpo: collate(examples, pad_id, dpo)


__all__ = ["TrainModule", "align_objective", "collator", "response_logps", "sft_loss"]
