"""Shared fixtures: the default model is loaded once per test session, tiny models per test."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from mlcwb.notebooks import use_numba_cache

use_numba_cache()  # before any test module imports umap (mlcwb.notebooks itself imports no numba)
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"


@pytest.fixture(scope="session")
def artifacts_dir() -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    return ARTIFACTS


@pytest.fixture(scope="session")
def default_model():
    """(model, tokenizer) of SmolLM2-135M-Instruct; read-only by convention (copy before training)."""
    from mlcwb.models import load_model

    return load_model("smollm2-135m-instruct", device="cpu")


@pytest.fixture
def tiny_llama():
    from mlcwb.models import load_model

    return load_model("tiny-random-llama", device="cpu")


@pytest.fixture
def tiny_t5():
    from mlcwb.models import load_model

    return load_model("tiny-random-t5", device="cpu")
