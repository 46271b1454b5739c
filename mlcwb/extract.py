"""Hidden states per (prompt, language, layer): batched, exact, early-exiting, cached.

Every geometry picture and the MLC loss read a model's hidden state at some position of a prompt.
This module owns that reading:

* ``encode_with_content`` tokenizes prompts through ``mlcwb.models.encode_prompts`` (the one
  tokenization path) and also marks which tokens belong to the user's own text inside the
  chat-formatted prompt, so a pooling can look at the content rather than the template.
* ``pool_hidden`` turns ``(batch, seq, hidden)`` states into one vector per prompt. It is the one
  implementation of "last prompt token"; training reuses it, so it is differentiable and correct for
  left- and right-padded batches alike.
* ``backbone``, ``resolve_layers`` and ``position_ids`` are the one answer to "which stack, which
  layer, which positions", shared by the two forward paths below.
* ``extract`` (forward path 1) runs prompts through the model's backbone only (no LM head, no
  logits), stops after the deepest requested block, sorts prompts by length so batches carry
  little padding, runs the prefix all prompts share once (causal decoder-only models), pools
  several ways from the same forwards, and caches each pooling in a run directory.
* ``prompt_states`` (forward path 2, training's MLC term) keeps gradients and reads one layer; with
  ``bucketed`` it runs the prefix every row shares once and the rest in length buckets
  (``length_buckets``, ``shared_prefix``; ``computed_positions`` counts what it costs).

Layer indices follow ``output_hidden_states``: 0 is the embedding output (the input of block 1),
``i`` is the output of block ``i``, and ``num_hidden_layers`` is the output of the last block *after
the final norm* (HF replaces the raw last-block output by the normed one). Negative indices count
from the end, so ``-1`` is the final-norm output.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import logging
import re
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from mlcwb.errors import CacheError, ConfigError, ExtractionError, LanguageError
from mlcwb.io import atomic_write_bytes, atomic_write_json
from mlcwb.models import (encode_prompts, format_prompt, model_fingerprint, resolve_device,
                          uses_chat_template)
from mlcwb.prefix import (MIN_PREFIX, cache_kwargs, common_prefix, expand_cache, pack_after_prefix,
                          prefix_cache)

if TYPE_CHECKING:
    from mlcwb.data import PromptSet

log = logging.getLogger(__name__)

POOLINGS = ("last", "content_last", "content_mean", "mean")
"""``last``: last non-pad token; with a chat template that is the last token of the generation
prompt (``<|im_start|>assistant\\n``), the position the paper pools and the one the first answer
token is predicted from. ``content_last``: last token of the user's text. ``content_mean``: mean
over the user's text. ``mean``: mean over every non-pad token (template included)."""

MAX_PADDING = 0.25  # padding a length bucket may add, as a share of its real tokens
CACHE_VERSION = 1
_SENTINEL = "\uE000mlcwb-user-text\uE001"  # private-use chars: never in a real prompt or template


# --------------------------------------------------------------------------------------------
# Encoding and pooling
# --------------------------------------------------------------------------------------------

def _user_span(tokenizer: Any, text: str, chat_template: bool) -> tuple[int, int]:
    """Character span ``[start, end)`` of ``text`` inside ``format_prompt(tokenizer, text)``.

    The template is rendered once around a sentinel to learn its prefix and suffix, so a user text
    that also occurs in the system prompt or in the template (``"assistant"``) is still found at
    the right place. Templates that rewrite the content (e.g. trim it) fall back to the last
    occurrence of the stripped text.
    """
    formatted = format_prompt(tokenizer, text, chat_template)
    framed = format_prompt(tokenizer, _SENTINEL, chat_template)
    if framed.count(_SENTINEL) == 1:
        prefix, suffix = framed.split(_SENTINEL)
        if formatted == prefix + text + suffix:
            return len(prefix), len(prefix) + len(text)
    core = text.strip()
    start = formatted.rfind(core) if core else -1
    if start < 0:
        raise ExtractionError(
            f"The chat template changed the user text beyond recognition, so its tokens cannot be "
            f"located (text starts {text[:40]!r}). Use pooling='last' or 'mean', or "
            f"chat_template=False."
        )
    return start, start + len(core)


def encode_with_content(tokenizer: Any, texts: Sequence[str], chat_template: bool = True,
                        padding_side: str = "left") -> Any:
    """Tokenize prompts like ``encode_prompts`` and add ``content_mask`` (1 on user-text tokens).

    A token counts as content when its character span overlaps the user's text in the formatted
    prompt (fast tokenizers' offset mapping). Slow tokenizers have no offsets: there the content
    tokens are located by tokenizing the prefix before and through the user text and taking the
    difference, which can be off by one token where a merge crosses the boundary (a warning says so).
    """
    texts = list(texts)
    spans = [_user_span(tokenizer, t, chat_template) for t in texts]
    if getattr(tokenizer, "is_fast", False):
        enc = encode_prompts(tokenizer, texts, chat_template=chat_template,
                             padding_side=padding_side, return_offsets_mapping=True)
        offsets = enc.pop("offset_mapping")
        starts = torch.tensor([s for s, _ in spans]).unsqueeze(1)
        ends = torch.tensor([e for _, e in spans]).unsqueeze(1)
        overlap = (offsets[..., 0] < ends) & (offsets[..., 1] > starts)
        enc["content_mask"] = (overlap & enc["attention_mask"].bool()).long()
        return enc
    log.warning("%s is a slow tokenizer (no offset mapping): user-text tokens are located by "
                "prefix token counts and may be off by one at the boundaries.",
                type(tokenizer).__name__)
    enc = encode_prompts(tokenizer, texts, chat_template=chat_template, padding_side=padding_side)
    templated = uses_chat_template(tokenizer, chat_template)

    def count(prefix: str) -> int:  # special tokens as encode_prompts adds them
        return len(tokenizer(prefix, add_special_tokens=not templated)["input_ids"])

    content = torch.zeros_like(enc["attention_mask"])
    width = content.shape[1]
    for row, (text, (start, end)) in enumerate(zip(texts, spans)):
        formatted = format_prompt(tokenizer, text, chat_template)
        length = int(enc["attention_mask"][row].sum())
        pad = width - length if padding_side == "left" else 0
        first, last = count(formatted[:start]), count(formatted[:end])
        content[row, pad + first: pad + max(last, first + 1)] = 1
    enc["content_mask"] = content * enc["attention_mask"]
    return enc


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
# Representations
# --------------------------------------------------------------------------------------------

def _paths(path: str | Path) -> tuple[Path, Path]:
    path = Path(path)
    base = path.with_suffix("") if path.suffix in (".safetensors", ".json") else path
    return base.with_name(base.name + ".safetensors"), base.with_name(base.name + ".json")


@dataclass
class Representations:
    """Pooled hidden states, float32 ``(n_prompts, n_langs, n_layers, hidden)``.

    ``layers`` holds ``hidden_states`` indices (0 = embeddings, ``num_hidden_layers`` = after the
    final norm); ``texts[p][l]`` is the text of prompt ``p`` in language ``languages[l]``.
    """

    values: np.ndarray
    prompt_ids: list[str]
    languages: list[str]
    layers: list[int]
    pooling: str
    model_fingerprint: str
    harmful: list[bool] | None = None
    texts: list[list[str]] | None = None
    meta: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        want = (len(self.prompt_ids), len(self.languages), len(self.layers))
        if self.values.ndim != 4 or self.values.shape[:3] != want:
            raise ExtractionError(f"values has shape {self.values.shape}; expected {want} + (hidden,) "
                                  f"from prompt_ids, languages and layers.")

    def layer(self, layer: int) -> np.ndarray:
        """``(n_prompts, n_langs, hidden)`` at one ``hidden_states`` index (must have been extracted)."""
        if layer not in self.layers:
            raise ExtractionError(f"Layer {layer} was not extracted; available: {self.layers}.")
        return self.values[:, :, self.layers.index(layer)]

    def save(self, path: str | Path) -> Path:
        """Write ``<path>.safetensors`` (values) then ``<path>.json`` (everything else + checksum).

        The sidecar is written last and records the values file's sha256, so a half-written pair
        or a damaged values file is detected on load.
        """
        from safetensors.numpy import save as st_save

        values_path, meta_path = _paths(path)
        blob = st_save({"values": np.ascontiguousarray(self.values, dtype=np.float32)})
        atomic_write_bytes(values_path, blob)
        atomic_write_json(meta_path, {
            "format": "mlcwb.Representations", "version": CACHE_VERSION,
            "values_file": values_path.name, "values_sha256": hashlib.sha256(blob).hexdigest(),
            "shape": list(self.values.shape), "prompt_ids": self.prompt_ids,
            "languages": self.languages, "layers": self.layers, "pooling": self.pooling,
            "model_fingerprint": self.model_fingerprint, "harmful": self.harmful,
            "texts": self.texts, "meta": self.meta,
        })
        return values_path

    @classmethod
    def load(cls, path: str | Path) -> "Representations":
        """Read a pair written by ``save``; ``CacheError`` if either file is missing or damaged."""
        from safetensors.numpy import load as st_load

        values_path, meta_path = _paths(path)
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
            blob = values_path.read_bytes()
        except (OSError, json.JSONDecodeError) as exc:
            raise CacheError(f"Cannot read representations at {values_path} / {meta_path}: {exc}. "
                             f"Delete them to recompute.") from exc
        if meta.get("format") != "mlcwb.Representations" or \
                hashlib.sha256(blob).hexdigest() != meta.get("values_sha256"):
            raise CacheError(f"{values_path} does not match its sidecar {meta_path.name} (truncated "
                             f"or overwritten); delete both to recompute.")
        try:
            values = st_load(blob)["values"]
            return cls(values=values, prompt_ids=meta["prompt_ids"], languages=meta["languages"],
                       layers=meta["layers"], pooling=meta["pooling"],
                       model_fingerprint=meta["model_fingerprint"], harmful=meta.get("harmful"),
                       texts=meta.get("texts"), meta=meta.get("meta") or {})
        except Exception as exc:  # safetensors and __post_init__ raise their own types
            raise CacheError(f"{values_path}: unreadable representations ({exc}); delete it to "
                             f"recompute.") from exc


# --------------------------------------------------------------------------------------------
# The backbone: which stack, which blocks, which layer, which positions
# --------------------------------------------------------------------------------------------

class _StopForward(Exception):
    """Raised by a hook after the deepest requested block: the rest of the forward is skipped."""


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


# --------------------------------------------------------------------------------------------
# Forward path 1, extraction: no gradients, stop after the deepest requested block
# --------------------------------------------------------------------------------------------

def _hidden(output: Any) -> torch.Tensor:
    """The hidden states in a block's output (a tensor or a tuple) or the stack's (a ModelOutput)."""
    if isinstance(output, (tuple, list)):
        return output[0]
    return getattr(output, "last_hidden_state", output)


@contextmanager
def _capturing(bb: Backbone, layers: list[int], stop: bool) -> Iterator[dict[int, torch.Tensor]]:
    """Hooks that fill ``{layer: (batch, seq, dim)}`` while the backbone runs; with ``stop`` the
    forward is cut short (``_StopForward``) after the deepest requested block.

    Index 0 is read as the input of block 1 (so model-specific embedding scaling is included), index
    ``i < n`` as the output of block ``i``, index ``n`` as the backbone's final (normed) output.
    """
    captured: dict[int, torch.Tensor] = {}
    deepest = max(layers) if stop else None

    def pre_hook(_module, args, kwargs):
        captured[0] = args[0] if args else kwargs["hidden_states"]
        if deepest == 0:
            raise _StopForward

    def post_hook(index: int):
        def hook(_module, _args, output):
            captured[index] = _hidden(output)
            if index == deepest and index < bb.n_layers:
                raise _StopForward
        return hook

    handles = []
    if 0 in layers:
        handles.append(bb.blocks[0].register_forward_pre_hook(pre_hook, with_kwargs=True))
    for index in layers:
        if index >= 1:
            module = bb.module if index == bb.n_layers else bb.blocks[index - 1]
            handles.append(module.register_forward_hook(post_hook(index)))
    try:
        yield captured
    finally:
        for handle in handles:
            handle.remove()


def _forward_states(bb: Backbone, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                    layers: list[int], positions: torch.Tensor | None = None,
                    past: Any = None) -> dict[int, torch.Tensor]:
    """Run the backbone on one batch, return ``{layer: (batch, seq, dim)}``, exiting early.

    With ``past`` (keys/values of a shared prefix), ``input_ids`` are the tokens after the prefix,
    ``attention_mask`` covers prefix and tokens, and ``positions`` continue after the prefix.
    """
    kwargs: dict[str, Any] = {"input_ids": input_ids, "attention_mask": attention_mask}
    if bb.takes_position_ids:
        kwargs["position_ids"] = position_ids(attention_mask) if positions is None else positions
    if "use_cache" in inspect.signature(bb.module.forward).parameters:
        kwargs["use_cache"] = past is not None
    if past is not None:
        kwargs.update(cache_kwargs(bb.module, past))
    with _capturing(bb, layers, stop=True) as captured:
        try:
            bb.module(**kwargs)
        except _StopForward:
            pass
    return captured


def _trim(enc: dict[str, torch.Tensor], rows: list[int]) -> dict[str, torch.Tensor]:
    """Rows of a padded encoding, without the columns that are padding in all of them."""
    sub = {k: v[rows] for k, v in enc.items()}
    keep = sub["attention_mask"].bool().any(dim=0)
    return {k: v[:, keep] for k, v in sub.items()}


@dataclass
class _Prefix:
    """The leading tokens every prompt of one ``extract`` call shares, run once.

    ``rows``/``content`` are each prompt's unpadded tokens and content flags, to be packed after
    the prefix; ``sums`` holds, per requested layer, the float32 sum of the prefix's states, which
    ``mean`` pooling adds to each row's own sum (the prefix's tokens are part of every prompt).
    """

    length: int
    cache: Any
    rows: list[list[int]]
    content: list[list[int]]
    sums: dict[int, torch.Tensor]


def _extraction_prefix(bb: Backbone, enc: dict[str, torch.Tensor], layers: list[int],
                       poolings: list[str], device: torch.device) -> _Prefix | None:
    """The shared prefix of all prompts with its keys/values, or ``None`` where reusing it would
    not be exact or not pay: an encoder (attends both ways), a stack without ``position_ids``
    (positions could not skip the padding), or fewer than ``MIN_PREFIX`` shared tokens.

    The prefix stops before every row's first content token and last token (``common_prefix``),
    so the positions ``last``, ``content_last`` and ``content_mean`` read are each row's own. It
    runs through every block (``prefix_cache`` returns a whole stack's keys/values), once per call:
    a few dozen tokens, against the early exit the batches keep.
    """
    if not (bb.causal and bb.takes_position_ids):
        return None
    real = enc["attention_mask"].bool()
    rows = [ids[keep].tolist() for ids, keep in zip(enc["input_ids"], real)]
    content = [flags[keep].tolist() for flags, keep in zip(enc["content_mask"], real)]
    first_content = min(flags.index(1) if 1 in flags else len(flags) for flags in content)
    length = min(common_prefix(rows), first_content)
    if length < MIN_PREFIX:
        return None
    with _capturing(bb, layers if "mean" in poolings else [], stop=False) as captured:
        cache = prefix_cache(bb.module, rows[0][:length], device)
    if cache is None:
        return None
    sums = {layer: states[0].sum(dim=0, dtype=torch.float32) for layer, states in captured.items()}
    log.info("running the %d-token prefix shared by all %d prompts once", length, len(rows))
    return _Prefix(length, cache, rows, content, sums)


def _batch_states(bb: Backbone, enc: dict[str, torch.Tensor], rows: list[int], layers: list[int],
                  device: torch.device, prefix: _Prefix | None, padding_side: str,
                  pad_id: int) -> tuple[dict[int, torch.Tensor], dict[str, torch.Tensor]]:
    """``({layer: states}, masks)`` of one batch; after a prefix, of the tokens after it only.

    After a prefix each row is ``[prefix][pads][own]`` (left) or ``[prefix][own][pads]``, and its
    positions count from the full mask, so every token sees what it would see in the whole prompt.
    """
    if prefix is None:
        batch = {k: v.to(device) for k, v in _trim(enc, rows).items()}
        return _forward_states(bb, batch["input_ids"], batch["attention_mask"], layers), batch
    n = prefix.length
    ids, mask = pack_after_prefix([prefix.rows[r] for r in rows], n, pad_id, padding_side)
    # content flags packed like the tokens (their first n entries are 0 in every row)
    content, _ = pack_after_prefix([prefix.content[r] for r in rows], n, 0, padding_side)
    ids, mask, content = ids.to(device), mask.to(device), content.to(device)
    past = expand_cache(prefix.cache, len(rows), bb.module.config)
    states = _forward_states(bb, ids[:, n:], mask, layers, position_ids(mask)[:, n:], past)
    return states, {"input_ids": ids[:, n:], "attention_mask": mask[:, n:],
                    "content_mask": content[:, n:]}


def _pool(hidden: torch.Tensor, batch: dict[str, torch.Tensor], pooling: str,
          prefix: _Prefix | None, layer: int) -> torch.Tensor:
    """``pool_hidden`` over the batch's positions; after a prefix, ``mean`` also counts the
    prefix's tokens (their summed states at ``layer``), as if the whole prompt had run."""
    if pooling != "mean" or prefix is None:
        return pool_hidden(hidden, batch["attention_mask"], pooling, batch["content_mask"])
    mask = batch["attention_mask"].bool()
    summed = hidden.masked_fill(~mask.unsqueeze(-1), 0).sum(dim=1, dtype=torch.float32)
    counts = mask.sum(dim=1, keepdim=True).to(torch.float32) + prefix.length
    return ((summed + prefix.sums[layer]) / counts).to(hidden.dtype)


def _pooled_states(bb: Backbone, tokenizer: Any, texts: list[str], layers: list[int],
                   poolings: list[str], chat_template: bool, batch_size: int, device: torch.device,
                   padding_side: str, progress: bool,
                   reuse_prefix: bool) -> tuple[dict[str, np.ndarray], int]:
    """``{pooling: (n_texts, n_layers, dim)}`` float32 from one pass of length-sorted batches,
    and the length of the shared prefix run once for all of them (0: none)."""
    enc = encode_with_content(tokenizer, texts, chat_template=chat_template,
                              padding_side=padding_side)
    enc = {k: enc[k] for k in ("input_ids", "attention_mask", "content_mask")}
    lengths = enc["attention_mask"].sum(dim=1).tolist()
    order = sorted(range(len(texts)), key=lambda i: -lengths[i])  # longest first: OOM shows early
    batches = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    out: dict[str, np.ndarray] = {}
    with torch.inference_mode():
        prefix = _extraction_prefix(bb, enc, layers, poolings, device) if reuse_prefix else None
        for rows in tqdm(batches, desc="extract", unit="batch", disable=not progress):
            states, batch = _batch_states(bb, enc, rows, layers, device, prefix, padding_side,
                                          tokenizer.pad_token_id)
            for pooling in poolings:
                pooled = torch.stack([_pool(states[layer], batch, pooling, prefix, layer)
                                      for layer in layers], dim=1).float().cpu().numpy()
                if pooling not in out:
                    out[pooling] = np.empty((len(texts),) + pooled.shape[1:], dtype=np.float32)
                out[pooling][rows] = pooled
    return out, prefix.length if prefix is not None else 0


# --------------------------------------------------------------------------------------------
# Forward path 2, training: one layer, gradients kept, shared prefix and length buckets
# --------------------------------------------------------------------------------------------

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

# --------------------------------------------------------------------------------------------
# extract()
# --------------------------------------------------------------------------------------------

def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_")[:60] or "model"


def _sha(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, ensure_ascii=False, sort_keys=True).encode()).hexdigest()


def _gather_texts(prompts: "PromptSet | Sequence[str]", langs: Sequence[str] | str | None
                  ) -> tuple[list[str], list[str], list[list[str]], list[bool] | None]:
    """``(prompt_ids, languages, texts[p][l], harmful)`` with clear errors for missing/empty text."""
    if isinstance(prompts, str):
        raise ExtractionError("extract() takes a PromptSet or a list of texts, not one string; "
                              "wrap it in a list.")
    if isinstance(langs, str):
        langs = [langs]
    if hasattr(prompts, "prompts"):  # a PromptSet
        items = list(prompts.prompts)
        languages = list(langs) if langs is not None else list(prompts.languages)
        if not languages:
            raise LanguageError("The PromptSet has no language present for every prompt; pass langs=.")
        for lang in languages:
            missing = [p.id for p in items if lang not in p.text]
            if missing:
                present = sorted({code for p in items for code in p.text})
                raise LanguageError(
                    f"Language {lang!r} is missing for {len(missing)} of {len(items)} prompts "
                    f"(e.g. {missing[:3]}); languages in this set: {', '.join(present)}. Translate "
                    f"them first (mlcwb.translate) or drop {lang!r} from langs.")
        ids = [p.id for p in items]
        texts = [[p.text[lang] for lang in languages] for p in items]
        harmful = [bool(p.harmful) for p in items]
    else:
        items = list(prompts)
        if not all(isinstance(t, str) for t in items):
            raise ExtractionError("extract() takes a PromptSet or a list of strings.")
        languages = list(langs) if langs is not None else ["und"]
        if len(languages) != 1:
            raise ExtractionError("A plain list of texts is one language; pass at most one code in "
                                  "langs (it only labels the result).")
        ids = [str(i) for i in range(len(items))]
        texts = [[t] for t in items]
        harmful = None
    if not items:
        raise ExtractionError("No prompts to extract.")
    for pid, row in zip(ids, texts):
        for lang, text in zip(languages, row):
            if not text or not text.strip():
                raise ExtractionError(f"Prompt {pid!r} has an empty text in {lang!r}; fill or drop it.")
    return ids, languages, texts, harmful


def _cache_key(fingerprint: str, tokenizer: Any, chat_template: bool, layers: list[int],
               pooling: str, languages: list[str], ids: list[str], texts: list[list[str]]) -> dict:
    """What a cached result must have been made with to be reused (texts and template hashed)."""
    templated = uses_chat_template(tokenizer, chat_template)
    return {
        "version": CACHE_VERSION, "model_fingerprint": fingerprint, "layers": layers,
        "pooling": pooling, "languages": languages, "prompt_ids": ids, "texts": _sha(texts),
        "template": _sha([templated, getattr(tokenizer, "chat_template", None),
                          format_prompt(tokenizer, _SENTINEL, chat_template)]),
    }


def _pooling_names(pooling: str | Sequence[str]) -> list[str]:
    """The requested poolings as a list without repeats, each checked against ``POOLINGS``."""
    names = [pooling] if isinstance(pooling, str) else list(dict.fromkeys(pooling))
    if not names:
        raise ConfigError(f"No pooling requested; choose from {', '.join(POOLINGS)}.")
    for name in names:
        if name not in POOLINGS:
            raise ConfigError(f"Unknown pooling {name!r}; choose one of {', '.join(POOLINGS)}.")
    return names


def _run_device(model: Any, device: str | torch.device | None) -> torch.device:
    """Where the forwards run: the model's device, or ``device`` after moving the model there."""
    run_device = next(model.parameters()).device
    if device is not None and resolve_device(device) != run_device:
        run_device = resolve_device(device)
        log.info("moving the model to %s for extraction", run_device)
        model.to(run_device)
    return run_device


def _meta(name: str, templated: bool, n_layers: int, padding_side: str, key: dict,
          prefix_tokens: int) -> dict:
    """How a result was made. ``cache_key`` decides reuse; the shared prefix is recorded beside it
    but kept out of it, since the values are the same with or without it."""
    return {"model": name, "chat_template": templated, "num_hidden_layers": n_layers,
            "padding_side": padding_side, "cache_key": key,
            "prefix_reused": prefix_tokens > 0, "prefix_tokens": prefix_tokens,
            "layer_convention": "hidden_states: 0=embeddings, i=after block i, "
                                f"{n_layers}=after final norm"}


def extract(model: Any, tokenizer: Any, prompts: "PromptSet | Sequence[str]",
            langs: Sequence[str] | str | None = None, layers: Sequence[int] | int | None = None,
            pooling: str | Sequence[str] = "last", chat_template: bool = True, batch_size: int = 16,
            device: str | torch.device | None = None, cache_dir: str | Path | None = None,
            padding_side: str = "left", progress: bool = True,
            reuse_prefix: bool = True) -> Representations | dict[str, Representations]:
    """Pooled hidden states of every prompt in every language at the requested layers.

    ``layers``: ``hidden_states`` indices (0 = embeddings, ``num_layers(model)`` = after the final
    norm, negatives from the end; ``None`` = all). ``pooling``: one of ``POOLINGS`` (returns one
    ``Representations``) or a list of them (returns ``{pooling: Representations}``, all read from
    the same forwards, so a second pooling costs no second pass). ``device``: ``None`` = wherever
    the model is; otherwise the model is moved there ("auto" allowed). Only the backbone runs, up
    to the deepest requested block; no logits are computed. ``reuse_prefix``: on a causal
    decoder-only model, the tokens all prompts start with (the chat template's system prompt and
    user header) run once and their keys/values serve every batch; ``meta["prefix_tokens"]`` says
    how many. The states are the same either way; ``False`` runs every prompt whole. With ``cache_dir``
    (e.g. ``<run>/reps``), each pooling is cached in its own file: one computed with the same
    model weights, texts, layers, pooling and template is loaded instead of recomputed (only the
    missing poolings run); a stale or damaged one is recomputed with a warning.
    """
    names = _pooling_names(pooling)
    if batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1, got {batch_size}.")
    if padding_side not in ("left", "right"):
        raise ConfigError(f"padding_side must be 'left' or 'right', got {padding_side!r}.")
    bb = backbone(model)
    layer_list = resolve_layers(layers, bb.n_layers)
    ids, languages, texts, harmful = _gather_texts(prompts, langs)
    fingerprint = model_fingerprint(model)
    name = getattr(model, "mlcwb_name", None) or getattr(model, "name_or_path", "") or \
        type(model).__name__
    templated = uses_chat_template(tokenizer, chat_template)
    keys = {p: _cache_key(fingerprint, tokenizer, chat_template, layer_list, p, languages, ids, texts)
            for p in names}
    slot = _sha([languages, layer_list, ids, templated])[:12]
    paths = {p: Path(cache_dir) / f"{_slug(str(name))}-{p}-{slot}.safetensors" for p in names} \
        if cache_dir is not None else {}
    found = {p: reps for p in paths if (reps := _read_cache(paths[p], keys[p])) is not None}
    missing = [p for p in names if p not in found]
    if missing:
        run_device = _run_device(model, device)
        flat = [text for row in texts for text in row]
        pooled, prefix_tokens = _pooled_states(bb, tokenizer, flat, layer_list, missing,
                                               chat_template, batch_size, run_device, padding_side,
                                               progress, reuse_prefix)
        for p in missing:
            found[p] = Representations(
                values=pooled[p].reshape(len(ids), len(languages), len(layer_list), -1),
                prompt_ids=ids, languages=languages, layers=layer_list, pooling=p,
                model_fingerprint=fingerprint, harmful=harmful, texts=texts,
                meta=_meta(str(name), templated, bb.n_layers, padding_side, keys[p], prefix_tokens))
            if p in paths:
                found[p].save(paths[p])
                log.info("saved representations to %s", paths[p])
    return found[pooling] if isinstance(pooling, str) else {p: found[p] for p in names}


def _read_cache(path: Path, key: dict) -> Representations | None:
    _, meta_path = _paths(path)
    if not path.exists() and not meta_path.exists():
        return None
    try:
        reps = Representations.load(path)
    except CacheError as exc:
        log.warning("Ignoring a damaged cache, recomputing: %s", exc)
        return None
    stored = reps.meta.get("cache_key")
    if stored != key:
        changed = sorted(k for k in key if not isinstance(stored, dict) or stored.get(k) != key[k])
        log.warning("Cached representations at %s were made with a different %s; recomputing.",
                    path, ", ".join(changed) or "key")
        return None
    log.info("loaded cached representations from %s", path)
    return reps


__all__ = ["MAX_PADDING", "POOLINGS", "Backbone", "Representations", "backbone", "computed_positions",
           "encode_with_content", "extract", "length_buckets", "num_layers", "pool_hidden",
           "position_ids", "prompt_states", "resolve_layers", "shared_prefix"]
