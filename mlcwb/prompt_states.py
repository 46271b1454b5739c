"""Forward path 2, training's MLC term: pooled prompt states at one layer, with gradients.

``prompt_states`` runs the MLC prompts through the backbone (``mlcwb.backbone``; no LM head, an
encoder-decoder's encoder) and pools them with ``pool_hidden``, keeping gradients. With
``bucketed`` it runs the prefix every row shares once (``shared_prefix``; its keys and values come
from ``mlcwb.prefix``) and the rest in length buckets (``length_buckets``); ``computed_positions``
counts what a forward costs either way. Extraction, forward path 1, is ``mlcwb.extract``.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch

from mlcwb.backbone import Backbone, backbone, pool_hidden, position_ids, resolve_layers
from mlcwb.errors import ConfigError
from mlcwb.prefix import cache_kwargs, expand_cache, prefix_cache

MAX_PADDING = 0.25  # padding a length bucket may add, as a share of its real tokens


def length_buckets(lengths: Sequence[int], max_padding: float = MAX_PADDING) -> list[list[int]]:
    """Row indices grouped by length so that no group pads more than ``max_padding`` of its tokens.

    The L translations of one prompt differ several-fold in token count (with an English-centric
    tokenizer a Bengali prompt takes about four times the tokens of its English source), so one
    padded batch of them computes mostly padding. Longest rows first; a singleton never pads.
    """
    order = sorted(range(len(lengths)), key=lambda i: -int(lengths[i]))
    buckets: list[list[int]] = []
    current: list[int] = []
    real = 0
    for i in order:
        if current and lengths[current[0]] * (len(current) + 1) > (1 + max_padding) * (real + lengths[i]):
            buckets.append(current)
            current, real = [], 0
        current.append(i)
        real += int(lengths[i])
    if current:
        buckets.append(current)
    return buckets


def shared_prefix(input_ids: torch.Tensor, attention_mask: torch.Tensor,
                  content_mask: torch.Tensor | None = None) -> int:
    """Leading positions identical in every row (the chat template's system prompt and user
    header): computed once, their keys and values serve every row. Stops before any row's last
    token and before its first content token, so pooled positions always lie after it."""
    if input_ids.shape[0] < 2:
        return 0
    same = (input_ids == input_ids[:1]).all(0) & attention_mask.bool().all(0)
    length = int(same.long().cumprod(0).sum())
    length = min(length, int(attention_mask.sum(-1).min()) - 1)
    if content_mask is not None and bool(content_mask.any()):
        first = torch.where(content_mask.bool(), torch.arange(content_mask.shape[1], device=content_mask.device),
                            content_mask.shape[1]).amin()
        length = min(length, int(first))
    return max(length, 0)


def computed_positions(attention_mask: torch.Tensor, bucketed: bool, prefix: int = 0) -> int:
    """Positions a prompt-only forward computes (real tokens + padding), as ``prompt_states``
    runs it: one padded batch, or length buckets after a shared prefix of ``prefix`` tokens."""
    if not bucketed:
        return attention_mask.numel()
    lengths = (attention_mask.sum(-1) - prefix).tolist()
    return prefix + sum(len(rows) * max(lengths[i] for i in rows) for rows in length_buckets(lengths))


def _layer_states(bb: Backbone, index: int, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                  positions: torch.Tensor, past: Any = None) -> torch.Tensor:
    """``(batch, seq, dim)`` at ``hidden_states[index]``; the last index is read from
    ``last_hidden_state``, so the common case asks for no extra outputs."""
    kwargs: dict[str, Any] = {"input_ids": input_ids, "attention_mask": attention_mask,
                              "output_hidden_states": index != bb.n_layers, "use_cache": past is not None}
    if bb.takes_position_ids:
        kwargs["position_ids"] = positions
    if past is not None:
        kwargs.update(cache_kwargs(bb.module, past))
    out = bb.module(**kwargs)
    return out.last_hidden_state if index == bb.n_layers else out.hidden_states[index]


def prompt_states(model: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor, layer: int = -1,
                  pooling: str = "last", content_mask: torch.Tensor | None = None,
                  bucketed: bool = False) -> torch.Tensor:
    """Pooled hidden states (N, H) of right-padded prompt-only sequences from the backbone (no LM
    head; the encoder of an encoder-decoder), with gradients: the MLC term's forward.

    ``bucketed`` spends compute on real tokens only: the prefix every row shares is run once and
    its keys/values are reused (gradients flow back through them), and the rest runs in length
    buckets (see ``length_buckets``), each cut to its own width. Causal attention makes both
    exact: the states equal the one-batch ones (so an encoder, attending both ways, cannot).
    """
    bb = backbone(model)
    index = resolve_layers(layer, bb.n_layers)[0]
    if not bucketed:
        hidden = _layer_states(bb, index, input_ids, attention_mask, position_ids(attention_mask))
        return pool_hidden(hidden, attention_mask, pooling, content_mask=content_mask)
    if getattr(model.config, "is_encoder_decoder", False):
        raise ConfigError("length buckets reuse a causal prefix cache; an encoder attends both "
                          "ways: run it as one batch (bucketed=False).")
    if bool(attention_mask[:, 0].eq(0).any()):
        raise ConfigError("bucketed prompt_states needs right-padded rows (padding_side='right').")
    return _bucketed_states(model, bb, index, input_ids, attention_mask, pooling, content_mask)


def _prefix_cache(bb: Backbone, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                  content_mask: torch.Tensor | None) -> tuple[int, Any]:
    """``(length, keys/values)`` of the prefix all rows share; ``(0, None)`` when there is none
    or the model declines to cache (gradient checkpointing)."""
    prefix = shared_prefix(input_ids, attention_mask, content_mask)
    if not prefix:
        return 0, None
    cached = prefix_cache(bb.module, input_ids[0, :prefix].tolist(), input_ids.device)
    return (prefix, cached) if cached is not None else (0, None)


def _bucketed_states(model: Any, bb: Backbone, index: int, input_ids: torch.Tensor,
                     attention_mask: torch.Tensor, pooling: str,
                     content_mask: torch.Tensor | None) -> torch.Tensor:
    """``prompt_states`` after a shared prefix, in length buckets, rows back in input order."""
    prefix, cached = _prefix_cache(bb, input_ids, attention_mask, content_mask)
    groups = length_buckets((attention_mask.sum(-1) - prefix).tolist())
    parts = []
    for rows in groups:
        idx = torch.tensor(rows, device=input_ids.device)
        width = int(attention_mask[idx].sum(-1).max())
        mask = attention_mask[idx, :width]
        past = None if cached is None else expand_cache(cached, len(rows), model.config)
        hidden = _layer_states(bb, index, input_ids[idx, prefix:width], mask,
                               position_ids(mask)[:, prefix:], past)
        parts.append(pool_hidden(hidden, mask[:, prefix:], pooling,
                                 content_mask=None if content_mask is None else content_mask[idx, prefix:width]))
    order = torch.tensor([i for rows in groups for i in rows], device=input_ids.device)
    inverse = torch.empty_like(order)
    inverse[order] = torch.arange(len(order), device=order.device)
    return torch.cat(parts)[inverse]


__all__ = ["MAX_PADDING", "computed_positions", "length_buckets", "prompt_states", "shared_prefix"]
