"""Which stack, which layer, which positions, and how a sequence of states becomes one vector.

The one answer shared by both forwards over a model's hidden states, extraction
(``mlcwb.extract.extract``) and training's MLC term (``mlcwb.prompt_states.prompt_states``):

* ``backbone`` finds the stack whose blocks produce ``hidden_states`` (the decoder of a
  decoder-only model, the encoder of an encoder-decoder, through peft wrappers), never the LM head;
  ``num_layers`` counts its blocks.
* ``resolve_layers`` is the one check of a layer index, so extraction and training name a bad
  layer alike; ``position_ids`` counts positions from each row's first real token.
* ``pool_hidden`` turns ``(batch, seq, hidden)`` states into one vector per prompt, one of
  ``POOLINGS``. It is the one implementation of "last prompt token"; training reuses it, so it is
  differentiable and correct for left- and right-padded batches alike.

Layer indices follow ``output_hidden_states``: 0 is the embedding output (the input of block 1),
``i`` is the output of block ``i``, and ``num_hidden_layers`` is the output of the last block *after
the final norm* (HF replaces the raw last-block output by the normed one). Negative indices count
from the end, so ``-1`` is the final-norm output.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch

from mlcwb.defaults import POOLINGS  # defined there, torch-free, for the command line and mlc
from mlcwb.errors import ConfigError, ExtractionError


# --------------------------------------------------------------------------------------------
# Pooling
# --------------------------------------------------------------------------------------------

def pool_hidden(hidden: torch.Tensor, attention_mask: torch.Tensor, pooling: str = "last",
                content_mask: torch.Tensor | None = None) -> torch.Tensor:
    """One vector per sequence from ``hidden`` of shape ``(batch, seq, dim)`` -> ``(batch, dim)``.

    Positions come from the masks, never from the padding side, so left- and right-padded batches
    give the same vectors. Gradients flow to ``hidden`` (gather / masked sum), so training reuses
    this exact code. Pad positions are zero-filled rather than multiplied by 0, so a NaN at a pad
    position cannot leak into a mean. Means accumulate in float32.
    """
    if pooling not in POOLINGS:
        raise ConfigError(f"Unknown pooling {pooling!r}; choose one of {', '.join(POOLINGS)}.")
    if hidden.dim() != 3 or attention_mask.shape != hidden.shape[:2]:
        raise ExtractionError(
            f"pool_hidden needs hidden (batch, seq, dim) and a (batch, seq) mask; got "
            f"{tuple(hidden.shape)} and {tuple(attention_mask.shape)}.")
    mask = attention_mask.bool()
    if pooling.startswith("content"):
        if content_mask is None:
            raise ExtractionError(f"pooling={pooling!r} needs content_mask (from "
                                  f"mlcwb.extract.encode_with_content).")
        mask = mask & content_mask.bool()
    counts = mask.sum(dim=1)
    if bool((counts == 0).any()):
        rows = torch.nonzero(counts == 0).flatten().tolist()
        raise ExtractionError(f"pooling={pooling!r}: rows {rows[:10]} have no token to pool "
                              f"(empty text or all padding).")
    if pooling in ("last", "content_last"):
        positions = torch.arange(mask.shape[1], device=mask.device).expand_as(mask)
        index = torch.where(mask, positions, torch.full_like(positions, -1)).amax(dim=1)
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), index]
    summed = hidden.masked_fill(~mask.unsqueeze(-1), 0).sum(dim=1, dtype=torch.float32)
    return (summed / counts.unsqueeze(-1).to(torch.float32)).to(hidden.dtype)


# --------------------------------------------------------------------------------------------
# The backbone: which stack, which blocks, which layer, which positions
# --------------------------------------------------------------------------------------------

@dataclass
class Backbone:
    """The stack whose blocks produce ``hidden_states`` (never the LM head), as both forwards use it."""

    module: torch.nn.Module  # decoder stack (decoder-only) or encoder stack (encoder-decoder)
    blocks: torch.nn.ModuleList
    n_layers: int
    takes_position_ids: bool
    causal: bool  # decoder-only, causal attention: a shared prefix's keys/values fit every row


def backbone(model: Any) -> Backbone:
    """The decoder stack of a decoder-only model, the encoder of an encoder-decoder (bare or
    peft-wrapped): where a prompt's hidden states are read, without the LM head."""
    config = getattr(model, "config", None)
    text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
    n_layers = getattr(text_config, "num_hidden_layers", None)
    try:
        if getattr(config, "is_encoder_decoder", False):
            module = model.get_encoder()
        else:
            module = model.get_decoder() if hasattr(model, "get_decoder") else None
            module = module if module is not None else getattr(model, "model", None)
    except (AttributeError, NotImplementedError):
        module = None
    blocks = None
    if isinstance(module, torch.nn.Module) and isinstance(n_layers, int):
        for _name, child in module.named_children():
            if isinstance(child, torch.nn.ModuleList) and len(child) == n_layers:
                blocks = child
                break
    if blocks is None:
        raise ExtractionError(
            f"{type(model).__name__} exposes no hidden states mlcwb can read: it needs a "
            f"transformers config with num_hidden_layers and a decoder (get_decoder()/.model) or "
            f"encoder (get_encoder()) holding that many blocks in an nn.ModuleList.")
    params = inspect.signature(module.forward).parameters
    causal = not getattr(config, "is_encoder_decoder", False) and \
        getattr(text_config, "is_causal", True)
    return Backbone(module, blocks, n_layers, "position_ids" in params, bool(causal))


def num_layers(model: Any) -> int:
    """Number of blocks; valid layer indices are ``0 .. num_layers(model)`` (last = after final norm)."""
    return backbone(model).n_layers


def resolve_layers(layers: Sequence[int] | int | None, n_layers: int) -> list[int]:
    """``hidden_states`` indices as sorted, unique, non-negative ints (``None``: all of them).

    The one check of a layer index, so extraction and training name a bad layer alike.
    """
    if layers is None:
        return list(range(n_layers + 1))
    if isinstance(layers, int):
        layers = [layers]
    out: list[int] = []
    for layer in layers:
        if not isinstance(layer, (int, np.integer)) or not -(n_layers + 1) <= layer <= n_layers:
            raise ExtractionError(
                f"Layer {layer!r} is out of range: this model has {n_layers} blocks, so valid "
                f"hidden_states indices are 0..{n_layers} (0 = embeddings, {n_layers} = after the "
                f"final norm) or -{n_layers + 1}..-1 counted from the end.")
        layer = int(layer) % (n_layers + 1)
        if layer not in out:
            out.append(layer)
    if not out:
        raise ExtractionError(f"No layers requested; valid indices are 0..{n_layers}.")
    return sorted(out)


def position_ids(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions counted from each row's first real token, so a left-padded prompt gets the same
    rotary angles as the same prompt alone (HF's plain forward would start them at the first pad)."""
    return (attention_mask.long().cumsum(-1) - 1).clamp_min(0)


__all__ = ["POOLINGS", "Backbone", "backbone", "num_layers", "pool_hidden", "position_ids",
           "resolve_layers"]
