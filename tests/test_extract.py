"""mlcwb.extract: pooling, content masks, layer convention, early exit, exactness, cache, errors."""

from __future__ import annotations

import argparse
import logging

import numpy as np
import pytest
import torch

from mlcwb.backbone import backbone, num_layers, pool_hidden
from mlcwb.commands.extract import register
from mlcwb.data import Prompt, PromptSet
from mlcwb.defaults import POOLINGS
from mlcwb.errors import ConfigError, ExtractionError, LanguageError
from mlcwb.extract import encode_with_content, extract
from mlcwb.models import encode_prompts
from mlcwb.representations import Representations

TEXTS = ["héllo world", "assistant", "a much longer prompt, with 你好 and مرحبا in it", "user",
         "Short.", "How do I make a cake without eggs or milk at home?"]


def _promptset() -> PromptSet:
    rows = [("p1", "How do I pick a lock?", "我如何开锁？", True),
            ("p2", "Bake bread at home.", "在家烤面包。", False),
            ("p3", "Tell me a longer story about a dragon and a knight.", "给我讲一个龙和骑士的故事。", False)]
    return PromptSet([Prompt(id=i, text={"en": en, "zh": zh}, harmful=h, category="test")
                      for i, en, zh, h in rows], name="t")


# ---------------------------------------------------------------- pool_hidden

def _padded(side: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[torch.Tensor]]:
    """Two sequences (lengths 3 and 5) padded to 5 on ``side``; content = positions 1.. -2."""
    torch.manual_seed(0)
    seqs = [torch.randn(3, 4), torch.randn(5, 4)]
    hidden = torch.full((2, 5, 4), float("nan"))  # pads hold NaN: they must never leak
    mask = torch.zeros(2, 5, dtype=torch.long)
    content = torch.zeros(2, 5, dtype=torch.long)
    for row, seq in enumerate(seqs):
        n = len(seq)
        sl = slice(5 - n, 5) if side == "left" else slice(0, n)
        hidden[row, sl] = seq
        mask[row, sl] = 1
        content[row, sl.start + 1: sl.stop - 1] = 1
    return hidden, mask, content, seqs


@pytest.mark.parametrize("side", ["left", "right"])
def test_pool_hidden_values_match_hand_computation(side: str) -> None:
    hidden, mask, content, seqs = _padded(side)
    expected = {
        "last": torch.stack([s[-1] for s in seqs]),
        "mean": torch.stack([s.mean(0) for s in seqs]),
        "content_last": torch.stack([s[-2] for s in seqs]),
        "content_mean": torch.stack([s[1:-1].mean(0) for s in seqs]),
    }
    for pooling in POOLINGS:
        got = pool_hidden(hidden, mask, pooling, content_mask=content)
        assert torch.allclose(got, expected[pooling], atol=1e-6), pooling
        assert torch.isfinite(got).all()


@pytest.mark.parametrize("pooling", POOLINGS)
def test_pool_hidden_is_differentiable_and_touches_only_pooled_tokens(pooling: str) -> None:
    hidden, mask, content, _ = _padded("left")
    hidden = torch.nan_to_num(hidden).requires_grad_(True)
    pool_hidden(hidden, mask, pooling, content_mask=content).sum().backward()
    used = mask.bool() & (content.bool() if pooling.startswith("content") else True)
    grad_rows = hidden.grad.abs().sum(-1) > 0
    assert grad_rows.any()
    assert not (grad_rows & ~used).any()  # no gradient reaches padding (or template, for content_*)


def test_pool_hidden_errors() -> None:
    hidden, mask, content, _ = _padded("right")
    with pytest.raises(ConfigError, match="Unknown pooling"):
        pool_hidden(hidden, mask, "max")
    with pytest.raises(ExtractionError, match="content_mask"):
        pool_hidden(hidden, mask, "content_mean")
    with pytest.raises(ExtractionError, match="no token"):
        pool_hidden(hidden, mask, "content_last", content_mask=torch.zeros_like(content))


# ---------------------------------------------------------------- content mask

@pytest.mark.parametrize("side", ["left", "right"])
def test_content_mask_marks_exactly_the_user_text(tiny_llama, side: str) -> None:
    _, tok = tiny_llama
    enc = encode_with_content(tok, TEXTS, padding_side=side)
    plain = encode_prompts(tok, TEXTS, padding_side=side)
    assert torch.equal(enc["input_ids"], plain["input_ids"])  # same tokenization path
    for row, text in enumerate(TEXTS):
        ids = enc["input_ids"][row][enc["content_mask"][row].bool()]
        assert tok.decode(ids) == text  # "assistant"/"user" are found in the user turn, not the template


def test_content_mask_without_chat_template_skips_only_special_tokens(tiny_llama) -> None:
    _, tok = tiny_llama
    enc = encode_with_content(tok, TEXTS[:3], chat_template=False)
    for row, text in enumerate(TEXTS[:3]):
        ids = enc["input_ids"][row][enc["attention_mask"][row].bool()]
        assert ids[0] == tok.bos_token_id  # raw text gets its BOS ...
        content = enc["input_ids"][row][enc["content_mask"][row].bool()]
        assert len(content) == len(ids) - 1 and tok.decode(content) == text  # ... which is not content


class _SlowProxy:
    """The byte tokenizer pretending to be slow (no offset mapping)."""

    is_fast = False

    def __init__(self, tok):
        object.__setattr__(self, "_tok", tok)

    def __getattr__(self, name):
        return getattr(self._tok, name)

    def __setattr__(self, name, value):
        setattr(self._tok, name, value)

    def __call__(self, *args, **kwargs):
        if kwargs.get("return_offsets_mapping"):
            raise NotImplementedError("slow tokenizers have no offsets")
        return self._tok(*args, **kwargs)


def test_slow_tokenizer_fallback_agrees_on_byte_tokenizer(tiny_llama, caplog) -> None:
    _, tok = tiny_llama
    with caplog.at_level(logging.WARNING, logger="mlcwb.extract"):
        slow = encode_with_content(_SlowProxy(tok), TEXTS, padding_side="right")
    assert "slow tokenizer" in caplog.text
    fast = encode_with_content(tok, TEXTS, padding_side="right")
    assert torch.equal(slow["content_mask"], fast["content_mask"])


# ---------------------------------------------------------------- layers, early exit

def test_layer_indices_follow_output_hidden_states(tiny_llama) -> None:
    model, tok = tiny_llama
    n = num_layers(model)
    assert n == model.config.num_hidden_layers == 4
    reps = extract(model, tok, TEXTS[:2], progress=False)
    assert reps.layers == list(range(n + 1))
    for i, text in enumerate(TEXTS[:2]):
        enc = encode_prompts(tok, [text])
        with torch.no_grad():
            hs = model(**enc, output_hidden_states=True).hidden_states
        ref = torch.stack([pool_hidden(h, enc["attention_mask"], "last")[0] for h in hs]).numpy()
        assert np.abs(reps.values[i, 0] - ref).max() < 1e-5
    # -1 is the final-norm output, the same as index n
    assert np.array_equal(extract(model, tok, TEXTS[:2], layers=[-1], progress=False).values,
                          reps.values[:, :, [n]])


def test_encoder_decoder_several_poolings(tiny_t5) -> None:
    """An encoder attends both ways: no prefix reuse, but one pass still serves every pooling."""
    model, tok = tiny_t5
    every = extract(model, tok, TEXTS[:4], layers=[0, -1], pooling=list(POOLINGS), progress=False)
    for pooling in POOLINGS:
        alone = extract(model, tok, TEXTS[:4], layers=[0, -1], pooling=pooling, progress=False)
        assert every[pooling].values.shape == (4, 1, 2, 64)
        assert np.array_equal(every[pooling].values, alone.values), pooling
        assert every[pooling].meta["prefix_reused"] is False


def test_encoder_decoder_uses_encoder_states(tiny_t5) -> None:
    model, tok = tiny_t5
    reps = extract(model, tok, TEXTS[:3], layers=None, pooling="mean", progress=False)
    assert reps.values.shape == (3, 1, 3, 64)
    enc = encode_prompts(tok, [TEXTS[0]])
    with torch.no_grad():
        hs = model.get_encoder()(**enc, output_hidden_states=True).hidden_states
    ref = torch.stack([pool_hidden(h, enc["attention_mask"], "mean")[0] for h in hs]).numpy()
    assert np.abs(reps.values[0, 0] - ref).max() < 1e-5


def test_forward_stops_after_deepest_layer_and_skips_lm_head(tiny_llama) -> None:
    model, tok = tiny_llama
    blocks = backbone(model).blocks
    calls = {"block3": 0, "block4": 0, "head": 0}
    hooks = [blocks[2].register_forward_hook(lambda *a: calls.__setitem__("block3", calls["block3"] + 1)),
             blocks[3].register_forward_hook(lambda *a: calls.__setitem__("block4", calls["block4"] + 1)),
             model.lm_head.register_forward_hook(lambda *a: calls.__setitem__("head", calls["head"] + 1))]
    try:
        extract(model, tok, TEXTS, layers=[0, 2], batch_size=2, progress=False, reuse_prefix=False)
        assert calls == {"block3": 0, "block4": 0, "head": 0}
        # the shared prefix runs whole once (its keys/values for every block); the batches stop
        extract(model, tok, TEXTS, layers=[0, 2], batch_size=2, progress=False)
        assert calls == {"block3": 1, "block4": 1, "head": 0}
        extract(model, tok, TEXTS, layers=[-1], batch_size=2, progress=False)
        assert calls["block4"] == 1 + 1 + 3 and calls["head"] == 0
    finally:
        for h in hooks:
            h.remove()


# ---------------------------------------------------------------- exactness

def _per_prompt_reference(model, tok, texts, layers, poolings) -> dict[str, np.ndarray]:
    """Each prompt alone (no padding) through the full HF forward with output_hidden_states."""
    n = model.config.num_hidden_layers
    out: dict[str, list] = {p: [] for p in poolings}
    for text in texts:
        enc = encode_with_content(tok, [text])
        with torch.no_grad():
            hs = model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"],
                       output_hidden_states=True).hidden_states
        for p in poolings:
            out[p].append(torch.stack([pool_hidden(hs[i % (n + 1)], enc["attention_mask"], p,
                                                   enc["content_mask"])[0] for i in layers]))
    return {p: torch.stack(v).numpy() for p, v in out.items()}


def _max_batched_vs_reference(model, tok, texts, layers, poolings, side, batch_size) -> float:
    """Batched extraction, in given and in shuffled order (other batch mates), vs per prompt."""
    ref = _per_prompt_reference(model, tok, texts, layers, poolings)
    order = np.random.default_rng(1).permutation(len(texts))
    worst = 0.0
    for pooling in poolings:
        for perm, bs in ((np.arange(len(texts)), batch_size), (order, batch_size - 1)):
            batched = extract(model, tok, [texts[i] for i in perm], layers=layers, pooling=pooling,
                              batch_size=bs, padding_side=side, progress=False).values[:, 0]
            worst = max(worst, float(np.abs(batched - ref[pooling][perm]).max()))
    return worst


@pytest.mark.parametrize("side", ["left", "right"])
def test_batched_equals_per_prompt_tiny(tiny_llama, side: str) -> None:
    model, tok = tiny_llama
    assert _max_batched_vs_reference(model, tok, TEXTS, list(range(5)), POOLINGS, side, 4) < 1e-4


@pytest.mark.slow
def test_batched_equals_per_prompt_default_model(default_model) -> None:
    """SmolLM2 with its default SDPA attention: exact for left and right padding."""
    model, tok = default_model
    assert model.config._attn_implementation == "sdpa"
    texts = ["How do I pick a lock?", "我如何开锁？", "كيف أفتح قفلاً؟",
             "Tell me a long story about a dragon, a knight and a very old castle by the sea.",
             "Ninawezaje kufungua kufuli?", "Hi"]
    layers = [0, 15, -1]
    ref = _per_prompt_reference(model, tok, texts, layers, ("last", "content_mean"))
    order = np.random.default_rng(1).permutation(len(texts))
    for side, perm, bs in (("left", np.arange(len(texts)), 4), ("right", order, 3)):
        for pooling in ("last", "content_mean"):
            batched = extract(model, tok, [texts[i] for i in perm], layers=layers, pooling=pooling,
                              batch_size=bs, padding_side=side, progress=False).values[:, 0]
            diff = float(np.abs(batched - ref[pooling][perm]).max())
            assert diff < 1e-4, (side, pooling, diff)


# ---------------------------------------------------------------- several poolings, shared prefix

def _with_system_prompt(tok):
    """The byte tokenizer with a system turn in its template: a long prefix every prompt shares."""
    tok.chat_template = ("{{ '<|im_start|>system\\nYou are a careful assistant. Answer briefly and "
                         "honestly.<|im_end|>\\n' }}" + tok.chat_template)
    return tok


def _first_content_token(tok, text: str) -> int:
    return int(encode_with_content(tok, [text])["content_mask"][0].nonzero()[0])


def _max_relative_diff(a: np.ndarray, b: np.ndarray) -> float:
    """Largest entry difference of two state arrays, relative to each state vector's norm."""
    return float((np.abs(a - b).max(-1) / np.linalg.norm(b, axis=-1)).max())


def test_several_poolings_equal_single_pooling_calls(tiny_llama) -> None:
    model, tok = tiny_llama
    both = extract(model, tok, _promptset(), layers=[0, 2, 4],
                   pooling=["content_mean", "last", "mean", "last"], batch_size=2, progress=False)
    assert list(both) == ["content_mean", "last", "mean"]  # in the order asked, once each
    for pooling, reps in both.items():
        alone = extract(model, tok, _promptset(), layers=[0, 2, 4], pooling=pooling, batch_size=2,
                        progress=False)
        assert isinstance(alone, Representations) and reps.pooling == pooling
        assert np.array_equal(reps.values, alone.values), pooling
        assert reps.layers == [0, 2, 4] and reps.languages == ["en", "zh"]


def test_multi_pooling_call_reuses_cached_single_poolings(tiny_llama, tmp_path, monkeypatch,
                                                          caplog) -> None:
    import mlcwb.extract as ex

    model, tok = tiny_llama
    ps = _promptset()
    last = extract(model, tok, ps, layers=[1, 4], pooling="last", cache_dir=tmp_path, progress=False)
    real = ex._pooled_states
    computed: list[list[str]] = []

    def spy(bb, tokenizer, texts, layers, poolings, *rest):
        computed.append(list(poolings))
        return real(bb, tokenizer, texts, layers, poolings, *rest)

    monkeypatch.setattr(ex, "_pooled_states", spy)
    with caplog.at_level(logging.INFO, logger="mlcwb.extract"):
        both = extract(model, tok, ps, layers=[1, 4], pooling=["last", "content_mean"],
                       cache_dir=tmp_path, progress=False)
    assert computed == [["content_mean"]]  # only the pooling not cached yet ran
    assert "loaded cached representations" in caplog.text
    assert np.array_equal(both["last"].values, last.values)
    names = sorted(p.name for p in tmp_path.glob("*.safetensors"))
    assert len(names) == 2 and "-content_mean-" in names[0] and "-last-" in names[1]
    # ... and a single-pooling call finds what the multi-pooling call saved
    content = extract(model, tok, ps, layers=[1, 4], pooling="content_mean", cache_dir=tmp_path,
                      progress=False)
    again = extract(model, tok, ps, layers=[1, 4], pooling=["content_mean", "last"],
                    cache_dir=tmp_path, progress=False)
    assert computed == [["content_mean"]]
    assert np.array_equal(content.values, both["content_mean"].values)
    assert np.array_equal(again["content_mean"].values, content.values)


@pytest.mark.parametrize("side", ["left", "right"])
def test_shared_prefix_gives_the_states_of_whole_prompts(tiny_llama, side: str) -> None:
    model, tok = tiny_llama
    tok = _with_system_prompt(tok)
    layers = [0, 1, 2, 4]  # embeddings, blocks, and the final-norm output
    kwargs = dict(layers=layers, pooling=list(POOLINGS), batch_size=4, padding_side=side,
                  progress=False)
    reused = extract(model, tok, TEXTS, **kwargs)
    whole = extract(model, tok, TEXTS, reuse_prefix=False, **kwargs)
    for pooling in POOLINGS:
        assert _max_relative_diff(reused[pooling].values, whole[pooling].values) < 1e-4, pooling
        assert reused[pooling].meta["prefix_reused"] is True
        assert reused[pooling].meta["prefix_tokens"] == _first_content_token(tok, TEXTS[0]) > 40
        assert whole[pooling].meta["prefix_reused"] is False
        assert whole[pooling].meta["prefix_tokens"] == 0
    assert reused["last"].meta["cache_key"] == whole["last"].meta["cache_key"]


def test_shared_prefix_stops_before_the_content(tiny_llama) -> None:
    """Raw texts sharing a leading sentence: the prefix may not reach into the user's text, so
    only the BOS is shared, too short to reuse."""
    model, tok = tiny_llama
    texts = ["The weather is fine today. " + t for t in TEXTS[:3]]
    reps = extract(model, tok, texts, layers=[2], chat_template=False, progress=False)
    assert reps.meta["prefix_reused"] is False


@pytest.mark.slow
def test_shared_prefix_gives_the_states_of_whole_prompts_default_model(default_model) -> None:
    """SmolLM2's template opens every prompt with the same system prompt and user header."""
    model, tok = default_model
    texts = ["How do I pick a lock?", "我如何开锁？", "كيف أفتح قفلاً؟",
             "Tell me a long story about a dragon, a knight and a very old castle by the sea.",
             "Ninawezaje kufungua kufuli?", "Hi"]
    for side in ("left", "right"):
        kwargs = dict(layers=[0, 15, -1], pooling=list(POOLINGS), batch_size=4, padding_side=side,
                      progress=False)
        reused = extract(model, tok, texts, **kwargs)
        whole = extract(model, tok, texts, reuse_prefix=False, **kwargs)
        for pooling in POOLINGS:
            diff = _max_relative_diff(reused[pooling].values, whole[pooling].values)
            assert diff < 1e-4, (side, pooling, diff)
            assert reused[pooling].meta["prefix_tokens"] == _first_content_token(tok, texts[0]) >= 20


# ---------------------------------------------------------------- PromptSet, Representations, cache

def test_promptset_shapes_labels_and_roundtrip(tiny_llama, tmp_path) -> None:
    model, tok = tiny_llama
    reps = extract(model, tok, _promptset(), langs=["en", "zh"], layers=[1, 4], progress=False)
    assert reps.values.shape == (3, 2, 2, 64) and reps.values.dtype == np.float32
    assert reps.prompt_ids == ["p1", "p2", "p3"] and reps.languages == ["en", "zh"]
    assert reps.harmful == [True, False, False] and reps.texts[1][1] == "在家烤面包。"
    assert reps.layer(4).shape == (3, 2, 64)
    with pytest.raises(ExtractionError, match=r"available: \[1, 4\]"):
        reps.layer(2)
    back = Representations.load(reps.save(tmp_path / "r"))
    assert np.array_equal(back.values, reps.values) and back.texts == reps.texts
    assert back.layers == [1, 4] and back.meta["num_hidden_layers"] == 4


def test_cache_reuse_mismatch_and_corruption(tiny_llama, tmp_path, monkeypatch, caplog) -> None:
    import mlcwb.extract as ex

    model, tok = tiny_llama
    ps = _promptset()
    first = extract(model, tok, ps, layers=[2], cache_dir=tmp_path, progress=False)
    files = sorted(p.name for p in tmp_path.iterdir())
    assert len(files) == 2 and files[0].endswith(".json") and files[1].endswith(".safetensors")

    real = ex._pooled_states
    computed = []
    monkeypatch.setattr(ex, "_pooled_states", lambda *a, **k: computed.append(1) or real(*a, **k))
    again = extract(model, tok, ps, layers=[2], cache_dir=tmp_path, progress=False)
    assert computed == [] and np.array_equal(again.values, first.values)  # reused

    # same request slot, changed text -> stale: warn and recompute
    changed = PromptSet([Prompt(id=p.id, text={**p.text, "zh": p.text["zh"] + "！"}, harmful=p.harmful,
                                category=p.category) for p in ps], name="t")
    with caplog.at_level(logging.WARNING, logger="mlcwb.extract"):
        fresh = extract(model, tok, changed, layers=[2], cache_dir=tmp_path, progress=False)
    assert computed == [1] and "different texts" in caplog.text
    assert not np.array_equal(fresh.values[:, 1], first.values[:, 1])

    # changed weights -> different fingerprint -> recompute
    caplog.clear()
    with torch.no_grad():
        model.model.layers[0].mlp.up_proj.weight.mul_(1.5)
    with caplog.at_level(logging.WARNING, logger="mlcwb.extract"):
        extract(model, tok, changed, layers=[2], cache_dir=tmp_path, progress=False)
    assert computed == [1, 1] and "model_fingerprint" in caplog.text

    # damaged values file -> warn and recompute
    caplog.clear()
    values_file = next(tmp_path.glob("*.safetensors"))
    values_file.write_bytes(values_file.read_bytes()[:-7])
    with caplog.at_level(logging.WARNING, logger="mlcwb.extract"):
        extract(model, tok, changed, layers=[2], cache_dir=tmp_path, progress=False)
    assert computed == [1, 1, 1] and "damaged cache" in caplog.text
    assert Representations.load(values_file).values.shape == (3, 2, 1, 64)  # rewritten whole


# ---------------------------------------------------------------- errors

def test_errors_say_what_is_wrong(tiny_llama) -> None:
    model, tok = tiny_llama
    with pytest.raises(ExtractionError, match=r"valid hidden_states indices are 0\.\.4"):
        extract(model, tok, TEXTS, layers=[5], progress=False)
    with pytest.raises(ExtractionError, match="empty text"):
        extract(model, tok, ["fine", "  "], progress=False)
    with pytest.raises(LanguageError, match="'ar' is missing"):
        extract(model, tok, _promptset(), langs=["en", "ar"], progress=False)
    with pytest.raises(ExtractionError, match="no hidden states"):
        extract(torch.nn.Linear(2, 2), tok, TEXTS, progress=False)
    with pytest.raises(ConfigError, match="Unknown pooling"):
        extract(model, tok, TEXTS, pooling="first", progress=False)
    with pytest.raises(ConfigError, match=r"Unknown pooling 'max'; choose one of last, content_last"):
        extract(model, tok, TEXTS, pooling=["last", "max"], progress=False)
    with pytest.raises(ConfigError, match="No pooling requested"):
        extract(model, tok, TEXTS, pooling=[], progress=False)


def test_cli_registers_extract() -> None:
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(dest="cmd"))
    args = parser.parse_args(["extract", "--languages", "en,zh", "--layers", "0,-1", "--pooling",
                              "content_mean", "--split", "test", "--out", "runs/x"])
    assert args.cmd == "extract" and args.pooling == "content_mean" and callable(args.func)
    assert args.languages == "en,zh" == parser.parse_args(["extract", "--langs", "en,zh", "--out", "x"]).languages
    assert args.layers == "0,-1" and args.out == "runs/x"
