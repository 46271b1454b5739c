"""Hidden states per (prompt, language, layer): batched, exact, early-exiting, cached.

Every geometry picture reads a model's hidden state at some position of a prompt. This module
owns that reading for analysis (forward path 1):

* ``encode_with_content`` tokenizes prompts through ``mlcwb.models.encode_prompts`` (the one
  tokenization path) and also marks which tokens belong to the user's own text inside the
  chat-formatted prompt, so a pooling can look at the content rather than the template.
* ``extract`` runs prompts through the model's backbone only (no LM head, no logits), stops after
  the deepest requested block, sorts prompts by length so batches carry little padding, runs the
  prefix all prompts share once (causal decoder-only models), pools several ways from the same
  forwards, and caches each pooling in a run directory.

The rest of the hidden-state engine lives beside it: ``mlcwb.backbone`` (``backbone``,
``num_layers``, ``resolve_layers``, ``position_ids``, ``pool_hidden``, ``POOLINGS``: which stack,
which layer, which positions, and the pooling both forwards share, with the layer convention),
``mlcwb.representations`` (``Representations``, what ``extract`` returns and caches) and
``mlcwb.prompt_states`` (forward path 2, training's MLC term: gradients kept, one layer, shared
prefix and length buckets).
"""

from __future__ import annotations

import hashlib
import inspect
import json
import logging
import re
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from mlcwb.backbone import Backbone, backbone, pool_hidden, position_ids, resolve_layers
from mlcwb.defaults import POOLINGS
from mlcwb.errors import CacheError, ConfigError, ExtractionError, LanguageError
from mlcwb.models import (encode_prompts, format_prompt, model_fingerprint, resolve_device,
                          uses_chat_template)
from mlcwb.prefix import (MIN_PREFIX, cache_kwargs, common_prefix, expand_cache, pack_after_prefix,
                          prefix_cache)
from mlcwb.representations import CACHE_VERSION, Representations, representation_paths

if TYPE_CHECKING:
    from mlcwb.data import PromptSet

log = logging.getLogger(__name__)

_SENTINEL = "\uE000mlcwb-user-text\uE001"  # private-use chars: never in a real prompt or template


# --------------------------------------------------------------------------------------------
# Encoding with content
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


# --------------------------------------------------------------------------------------------
# Forward path 1, extraction: no gradients, stop after the deepest requested block
# --------------------------------------------------------------------------------------------

class _StopForward(Exception):
    """Raised by a hook after the deepest requested block: the rest of the forward is skipped."""


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
    _, meta_path = representation_paths(path)
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


__all__ = ["encode_with_content", "extract"]
