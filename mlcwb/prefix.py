"""The tokens every prompt shares, computed once: the chat template's prefix as a reusable KV cache.

A chat template opens every prompt alike (Qwen2.5's default system prompt and the user header are
about 24 of a typical prompt's 60 tokens). Causal attention makes the keys and values of those
positions the same for every prompt, so generation, extraction, utility and training's MLC term
compute them once per model and reuse them, instead of once per prompt. The rest of each prompt
is packed after the prefix with its padding *between* the prefix and the prompt's own tokens (or
after them), and position ids come from the attention mask, so every prompt sees exactly the
positions it would see alone.

The cache's argument and attribute were renamed (``past_key_values`` -> ``cache``) in
transformers 5; ``cache_kwargs`` and ``returned_cache`` speak whichever the installed version does.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from mlcwb.backbone import position_ids
from mlcwb.models import encode_prompts

MIN_PREFIX = 2  # a shorter common prefix (a lone BOS) saves less than the cache costs to copy


def cache_kwargs(module: Any, cache: Any) -> dict[str, Any]:
    """``{"cache": cache}`` or ``{"past_key_values": cache}``, as ``module``'s forward names it."""
    forward = getattr(module, "forward", module)
    params = inspect.signature(forward).parameters
    return {"cache": cache} if "cache" in params else {"past_key_values": cache}


def returned_cache(output: Any) -> Any:
    """The keys/values a forward with ``use_cache=True`` returned (``None`` if it declined)."""
    if hasattr(output, "get"):
        found = output.get("cache")
        return found if found is not None else output.get("past_key_values")
    return None


def common_prefix(rows: Sequence[Sequence[int]]) -> int:
    """Length of the token run every row starts with, leaving each row at least one own token
    (the position whose output predicts the answer must be computed per row)."""
    if len(rows) < 2:
        return 0
    limit = min(len(r) for r in rows) - 1
    first = rows[0]
    length = 0
    while length < limit and all(r[length] == first[length] for r in rows):
        length += 1
    return length


def prefix_cache(module: Any, prefix: Sequence[int], device: torch.device) -> Any:
    """Keys/values of ``prefix`` (one row) from ``module`` (a causal LM or its decoder stack);
    ``None`` when the module does not cache (gradient checkpointing, encoders)."""
    ids = torch.tensor([list(prefix)], device=device)
    out = module(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=True)
    return returned_cache(out)


def expand_cache(cache: Any, batch: int, config: Any) -> Any:
    """A fresh cache holding ``cache``'s single row for each of ``batch`` rows.

    Expanded views, not copies: appending to a cache concatenates into new tensors, so the shared
    prefix is never written to and serves every batch (gradients flow back through the views).
    """
    from transformers import DynamicCache

    return DynamicCache(ddp_cache_data=[(lay.keys.expand(batch, -1, -1, -1),
                                         lay.values.expand(batch, -1, -1, -1))
                                        for lay in cache.layers], config=config)


def pack_after_prefix(rows: Sequence[Sequence[int]], prefix: int, pad_id: int,
                      padding_side: str = "left") -> tuple[torch.Tensor, torch.Tensor]:
    """``(input_ids, attention_mask)`` of rows that share their first ``prefix`` tokens, each row
    ``[prefix][pads][own tokens]`` (``padding_side="left"``) or ``[prefix][own tokens][pads]``.

    Left padding keeps every row's last token in the last column, which is what ``generate``
    appends to; the pads sit where attention ignores them and positions are counted past them.
    """
    width = max(len(r) for r in rows) - prefix
    ids = torch.full((len(rows), prefix + width), pad_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, row in enumerate(rows):
        own = list(row[prefix:])
        start = prefix + (width - len(own) if padding_side == "left" else 0)
        ids[i, :prefix] = torch.tensor(list(row[:prefix]), dtype=torch.long)
        ids[i, start:start + len(own)] = torch.tensor(own, dtype=torch.long)
        mask[i, :prefix] = 1
        mask[i, start:start + len(own)] = 1
    return ids, mask


def after_prefix(model: Any, ids: torch.Tensor, mask: torch.Tensor, prefix: "SharedPrefix") -> dict[str, Any]:
    """Forward arguments for a packed batch whose first ``prefix.length`` columns are the shared
    prefix: only the rows' own columns are run, positions count from each row's first token
    (``backbone.position_ids``) and the prefix's keys/values come from its cache."""
    kwargs: dict[str, Any] = {"input_ids": ids[:, prefix.length:], "attention_mask": mask,
                              "position_ids": position_ids(mask)[:, prefix.length:]}
    if prefix.cache is not None:
        kwargs.update(cache_kwargs(model, expand_cache(prefix.cache, ids.shape[0], model.config)))
    return kwargs


@dataclass
class SharedPrefix:
    """The tokens every prompt of a call starts with and their keys/values (``mlcwb.prefix``)."""

    length: int = 0
    cache: Any = None


def prompt_rows(tokenizer: Any, texts: Sequence[str], chat_template: bool = True) -> list[list[int]]:
    """Token ids of each formatted prompt, unpadded (the one tokenization path, ``encode_prompts``)."""
    enc = encode_prompts(tokenizer, list(texts), chat_template=chat_template)
    return [ids[mask.bool()].tolist() for ids, mask in zip(enc["input_ids"], enc["attention_mask"])]


@torch.inference_mode()
def compute_prefix(model: Any, rows: Sequence[Sequence[int]]) -> SharedPrefix:
    """The common leading tokens of ``rows``, run once: empty for an encoder-decoder (its encoder
    attends both ways), for fewer than ``MIN_PREFIX`` shared tokens, or a model that does not cache."""
    if model.config.is_encoder_decoder:
        return SharedPrefix()
    length = common_prefix(rows)
    if length < MIN_PREFIX:
        return SharedPrefix()
    cache = prefix_cache(model, rows[0][:length], next(model.parameters()).device)
    return SharedPrefix(length, cache) if cache is not None else SharedPrefix()


__all__ = ["MIN_PREFIX", "SharedPrefix", "after_prefix", "cache_kwargs", "common_prefix", "compute_prefix",
           "expand_cache", "pack_after_prefix", "prefix_cache", "prompt_rows", "returned_cache"]
