"""Load the models mlcwb works with: a packaged default, hub ids, local dirs, tiny test models.

A packaged model's GGUF comes verified from ``mlcwb.model_fetch``; the first load dequantises it
and keeps a float32 copy in transformers' own format, so later loads skip the slow GGUF
dequantisation.

Tokenizer conventions are set once, here: a pad token always exists, padding is on the left
(what batched generation and last-token pooling need), and chat-formatted prompts are encoded
without a second BOS.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

from mlcwb.defaults import DEFAULT_MODEL  # kept light for the command line
from mlcwb.errors import ConfigError, ModelFetchError, UnknownModelError
from mlcwb.model_fetch import PACKAGED, cache_dir, fetch_packaged

log = logging.getLogger(__name__)

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


TINY = ("tiny-random-llama", "tiny-random-t5")


def known_models() -> list[str]:
    return sorted([*PACKAGED, *TINY])


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """``None``/``"auto"`` picks CUDA, then MPS, then CPU."""
    if device is None or device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    return torch.device(device)


def _converted_dir(name: str) -> Path:
    return cache_dir() / name / "hf-float32"


def _load_packaged(name: str) -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    converted = _converted_dir(name)
    if (converted / "config.json").is_file():
        try:
            return (AutoModelForCausalLM.from_pretrained(converted, dtype=torch.float32),
                    AutoTokenizer.from_pretrained(converted))
        except Exception as exc:  # any damage to our own copy: rebuild it from the verified GGUF
            log.warning("the converted copy %s cannot be loaded (%s: %s); converting again",
                        converted, type(exc).__name__, exc)
            shutil.rmtree(converted, ignore_errors=True)
    gguf = fetch_packaged(name)
    try:
        import gguf as _gguf  # noqa: F401  (transformers needs it for gguf_file=)
    except ImportError as exc:
        raise ModelFetchError("Loading GGUF files needs the `gguf` package: pip install gguf") from exc
    log.info("dequantising %s to float32 (once; later loads use the converted copy)", gguf.name)
    try:
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name,
                                                     dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    except Exception as exc:  # the checksum matched, so the installed transformers/gguf is at fault
        raise ModelFetchError(
            f"transformers could not load the verified GGUF {gguf} ({type(exc).__name__}: {exc}). "
            f"Check that the installed transformers and gguf versions match pyproject.toml."
        ) from exc
    # The weights are dequantised float32 now; the GGUF marker would only block saving/training.
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    with tempfile.TemporaryDirectory(dir=converted.parent) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        shutil.rmtree(converted, ignore_errors=True)
        os.replace(tmp, converted)
        os.makedirs(tmp)  # TemporaryDirectory wants something to remove
    return model, tokenizer


def byte_tokenizer() -> Any:
    """A byte-level tokenizer built offline: one token per UTF-8 byte plus ChatML specials.

    It covers every script, so tiny test models accept the whole multilingual corpus.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    vocab = {tok: i for i, tok in enumerate(specials)}
    for ch in sorted(alphabet):
        vocab[ch] = len(vocab)
    core = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    core.decoder = decoders.ByteLevel()
    # Like most base-model tokenizers, raw text gets a BOS; chat-formatted text must not.
    core.post_processor = processors.TemplateProcessing(
        single="<|endoftext|> $A", pair="<|endoftext|> $A $B", special_tokens=[("<|endoftext|>", 0)])
    tok = PreTrainedTokenizerFast(
        tokenizer_object=core, bos_token="<|endoftext|>", eos_token="<|im_end|>",
        pad_token="<|endoftext|>", unk_token="<|endoftext|>",
        additional_special_tokens=["<|im_start|>"],
    )
    tok.chat_template = CHATML_TEMPLATE
    return tok


def _tiny(name: str, seed: int = 0) -> tuple[Any, Any]:
    from transformers import LlamaConfig, LlamaForCausalLM, T5Config, T5ForConditionalGeneration

    tokenizer = byte_tokenizer()
    torch.manual_seed(seed)
    if name == "tiny-random-llama":
        config = LlamaConfig(
            vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=4,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
            bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=True,
        )
        model = LlamaForCausalLM(config)
    else:
        config = T5Config(
            vocab_size=len(tokenizer), d_model=64, d_kv=16, d_ff=128, num_layers=2,
            num_decoder_layers=2, num_heads=4, pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id, decoder_start_token_id=tokenizer.pad_token_id,
        )
        model = T5ForConditionalGeneration(config)
    model.config.name_or_path = name
    model.name_or_path = name
    return model.eval(), tokenizer


def _load_hub_or_local(name_or_path: str, dtype: torch.dtype | None) -> tuple[Any, Any]:
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoTokenizer

    local = Path(name_or_path).expanduser()
    if not local.exists() and (name_or_path.count("/") != 1 or name_or_path.startswith((".", "/"))):
        raise UnknownModelError(
            f"{name_or_path!r} is neither a known model ({', '.join(known_models())}), "
            f"a local model directory, nor a Hugging Face id of the form 'org/name'."
        )
    source = str(local) if local.exists() else name_or_path
    try:
        config = AutoConfig.from_pretrained(source)
        auto = AutoModelForSeq2SeqLM if config.is_encoder_decoder else AutoModelForCausalLM
        model = auto.from_pretrained(source, dtype=dtype or "auto")
        tokenizer = AutoTokenizer.from_pretrained(source)
    except Exception as exc:  # missing files, damaged weights, unreachable hub: one message
        if not isinstance(exc, OSError) and not local.exists():
            raise
        raise ModelFetchError(
            f"Could not load {name_or_path!r} ({type(exc).__name__}: {exc}).\n"
            f"A local directory needs config.json and complete weights (a truncated file means "
            f"copy or save it again); a hub id needs access to huggingface.co (and "
            f"`huggingface-cli login` for gated models)."
        ) from exc
    return model, tokenizer


def configure_tokenizer(tokenizer: Any) -> Any:
    """Apply mlcwb's conventions: a pad token exists and padding is on the left."""
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    tokenizer.padding_side = "left"
    return tokenizer


def load_model(name_or_path: str = DEFAULT_MODEL, device: str | torch.device | None = None,
               dtype: torch.dtype | str | None = None) -> tuple[Any, Any]:
    """Return ``(model, tokenizer)`` in eval mode on ``device``.

    ``name_or_path`` is a packaged alias (``smollm2-135m-instruct``), a tiny test model
    (``tiny-random-llama``, ``tiny-random-t5``), a local directory, or a Hugging Face id.
    """
    if isinstance(dtype, str):
        if not hasattr(torch, dtype):
            raise ConfigError(f"Unknown dtype {dtype!r}; use float32, bfloat16 or float16.")
        dtype = getattr(torch, dtype)
    if name_or_path in PACKAGED:
        model, tokenizer = _load_packaged(name_or_path)
    elif name_or_path in TINY:
        model, tokenizer = _tiny(name_or_path)
    else:
        model, tokenizer = _load_hub_or_local(name_or_path, dtype)
    if dtype is not None:
        model = model.to(dtype)
    model = model.to(resolve_device(device)).eval()
    model.mlcwb_name = name_or_path
    return model, configure_tokenizer(tokenizer)


def uses_chat_template(tokenizer: Any, chat_template: bool = True) -> bool:
    """Whether prompts are wrapped in the tokenizer's chat template: asked for, and one exists.

    A base model's tokenizer has no template, so ``chat_template=True`` falls back to raw text;
    every caller that must know which of the two happened (special tokens, cache keys) asks here.
    """
    return chat_template and bool(getattr(tokenizer, "chat_template", None))


def format_prompt(tokenizer: Any, text: str, chat_template: bool = True,
                  system: str | None = None) -> str:
    """The string a model sees for one user prompt, ending with the generation prompt.

    Without a chat template (base models), the raw text is used.
    """
    if not uses_chat_template(tokenizer, chat_template):
        return text
    messages = ([{"role": "system", "content": system}] if system else []) + [
        {"role": "user", "content": text}]
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def encode_prompts(tokenizer: Any, texts: list[str], chat_template: bool = True,
                   padding_side: str = "left", **kwargs: Any) -> Any:
    """Tokenize prompts as the model sees them, padded into one batch.

    A chat template writes its own BOS where the model wants one, so special tokens are added
    only to raw text: this is the single place that rule lives, so every caller that tokenizes a
    prompt (generation, extraction, scoring, training) goes through here.
    """
    templated = uses_chat_template(tokenizer, chat_template)
    formatted = [format_prompt(tokenizer, t, chat_template) for t in texts]
    previous = tokenizer.padding_side
    tokenizer.padding_side = padding_side
    try:
        return tokenizer(formatted, return_tensors="pt", padding=True,
                         add_special_tokens=not templated, **kwargs)
    finally:
        tokenizer.padding_side = previous


def model_fingerprint(model: Any) -> str:
    """A short hash of a model's config and weights, for cache keys.

    Every parameter contributes a strided sample of its values, so any fine-tuning step changes
    the fingerprint while hashing stays far cheaper than reading every weight.
    """
    digest = hashlib.sha256()
    digest.update(model.config.to_json_string(use_diff=True).encode())
    with torch.no_grad():
        for name, param in model.named_parameters():
            flat = param.detach().reshape(-1)
            sample = flat[:: max(1, flat.numel() // 4096)].float().cpu().numpy()
            digest.update(name.encode())
            digest.update(sample.tobytes())
    return digest.hexdigest()[:16]


__all__ = [
    "DEFAULT_MODEL", "configure_tokenizer", "encode_prompts", "format_prompt", "known_models",
    "load_model", "model_fingerprint", "resolve_device", "uses_chat_template",
]
