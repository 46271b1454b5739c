"""The MLC loss: its values, invariances, finite gradients on degenerate inputs, extractor, states."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mlcwb.errors import ConfigError, ExtractionError
from mlcwb.mlc import Extractor, MLCConfig, mlc_floor, mlc_loss, mlc_objective, pairwise_cosine_loss
from mlcwb.prompt_states import prompt_states

FAST = settings(max_examples=40, deadline=None)


def _direction(seed: int, dim: int) -> torch.Tensor:
    return torch.randn(dim, generator=torch.Generator().manual_seed(seed))


@FAST
@given(n_langs=st.integers(2, 12), dim=st.integers(2, 40), seed=st.integers(0, 10_000),
       tau=st.sampled_from([0.1, 0.2, 0.5]))
def test_collinear_rows_reach_the_floor_and_random_rows_sit_above_it(n_langs, dim, seed, tau):
    v = _direction(seed, dim)
    scales = torch.rand(n_langs, 1, generator=torch.Generator().manual_seed(seed + 1)) + 0.1
    collinear = mlc_loss((scales * v).unsqueeze(0), tau=tau)
    k = min(n_langs, dim)
    assert collinear.item() == pytest.approx(mlc_floor(k, tau), abs=1e-5)
    random_rows = torch.randn(8, n_langs, dim, generator=torch.Generator().manual_seed(seed + 2))
    assert mlc_loss(random_rows, tau=tau).item() > collinear.item() + 1e-4
    assert mlc_loss(random_rows, tau=tau).item() <= math.log(k) + 1e-5  # the ceiling


def test_floor_matches_the_value_design_reports_for_six_languages():
    assert mlc_floor(6, 0.2) == pytest.approx(0.033, abs=5e-4)


@FAST
@given(seed=st.integers(0, 10_000), n_langs=st.integers(2, 8),
       scale=st.lists(st.floats(1e-3, 1e3), min_size=8, max_size=8))
def test_invariant_to_positive_scaling_of_each_vector(seed, n_langs, scale):
    z = torch.randn(3, n_langs, 16, generator=torch.Generator().manual_seed(seed))
    factors = torch.tensor(scale[:n_langs]).view(1, n_langs, 1)
    assert mlc_loss(z * factors).item() == pytest.approx(mlc_loss(z).item(), abs=1e-5)
    assert pairwise_cosine_loss(z * factors).item() == pytest.approx(
        pairwise_cosine_loss(z).item(), abs=1e-5)


DEGENERATE = {
    "identical vectors": torch.ones(4, 8),
    "one zero vector": torch.cat([torch.zeros(1, 8), torch.randn(3, 8)]),
    "all zero": torch.zeros(3, 8),
    "L=2 identical": torch.ones(2, 8),
    "L=2 orthogonal (equal singular values)": torch.eye(2, 8),
    "L=2 opposite": torch.stack([torch.ones(8), -torch.ones(8)]),
    "rank deficient, L > d": torch.randn(6, 1).repeat(1, 3),
    "tiny norms": torch.randn(4, 8) * 1e-30,
}


@pytest.mark.parametrize("name", list(DEGENERATE))
@pytest.mark.parametrize("loss", [mlc_loss, pairwise_cosine_loss], ids=["official", "cosine"])
def test_gradients_are_finite_and_bounded_on_degenerate_inputs(name, loss):
    z = DEGENERATE[name].clone().requires_grad_()
    value = loss(z.unsqueeze(0))
    value.backward()
    assert torch.isfinite(value)
    assert torch.isfinite(z.grad).all(), name
    assert z.grad.abs().max() < 1e3, f"{name}: gradient {z.grad.abs().max():.3g} would wreck a step"


@FAST
@given(seed=st.integers(0, 10_000), n_langs=st.integers(2, 10), noise=st.sampled_from([0, 1e-7, 1e-3]))
def test_gradients_finite_near_collinearity(seed, n_langs, noise):
    g = torch.Generator().manual_seed(seed)
    z = (_direction(seed, 12).repeat(n_langs, 1) + noise * torch.randn(n_langs, 12, generator=g))
    z = z.unsqueeze(0).requires_grad_()
    mlc_loss(z).backward()
    assert torch.isfinite(z.grad).all()


def test_bf16_and_autocast_inputs_give_a_float32_loss():
    z = torch.randn(2, 5, 32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        value = mlc_loss(z.bfloat16())
    assert value.dtype == torch.float32
    assert value.item() == pytest.approx(mlc_loss(z.bfloat16().float()).item(), abs=1e-6)


def test_ragged_list_is_the_mean_of_its_prompts():
    a, b = torch.randn(3, 16), torch.randn(5, 16)
    expected = (mlc_loss(a) + mlc_loss(b)) / 2
    assert mlc_loss([a, b]).item() == pytest.approx(expected.item(), abs=1e-6)


def test_language_weights_only_their_ratios_matter_and_they_change_the_loss():
    z = torch.randn(4, 5, 16)
    assert mlc_loss(z, weights=torch.full((5,), 3.0)).item() == pytest.approx(mlc_loss(z).item(), abs=1e-5)
    w = torch.tensor([4.0, 1, 1, 1, 1])
    assert abs(mlc_loss(z, weights=w).item() - mlc_loss(z).item()) > 1e-3
    assert mlc_loss(z, weights=[4.0, 1, 1, 1, 1]).item() == pytest.approx(mlc_loss(z, weights=w).item())


def test_cosine_variant_is_zero_when_collinear_and_one_when_orthogonal():
    v = torch.randn(16)
    assert pairwise_cosine_loss(torch.stack([v, 2 * v, 0.5 * v])).item() == pytest.approx(0, abs=1e-6)
    assert pairwise_cosine_loss(torch.eye(3, 8)).item() == pytest.approx(1, abs=1e-6)
    z = torch.randn(2, 3, 8)
    assert mlc_objective(z, MLCConfig(variant="cosine")).item() == pytest.approx(
        pairwise_cosine_loss(z).item())
    assert mlc_objective(z, MLCConfig(tau=0.5)).item() == pytest.approx(mlc_loss(z, tau=0.5).item())


def test_loss_rejects_wrong_shapes():
    with pytest.raises(ConfigError, match="prompts, languages, dim"):
        mlc_loss(torch.randn(2, 3, 4, 5))


def test_extractor_kinds_and_reference_copy():
    h = torch.randn(3, 10)
    linear, again = Extractor(10, 4, "linear", seed=1), Extractor(10, 4, "linear", seed=1)
    assert torch.equal(linear(h), again(h)) and linear(h).shape == (3, 4)
    assert all(p.requires_grad for p in linear.parameters())
    frozen = Extractor(10, 4, "frozen", seed=1)
    assert torch.equal(frozen(h), linear(h)) and not any(p.requires_grad for p in frozen.parameters())
    assert torch.equal(Extractor(10, 4, "identity")(h), h)
    ref = linear.reference()
    with torch.no_grad():
        linear.proj.weight.add_(1.0)
    assert torch.equal(ref(h), again(h)), "the reference keeps the initial projection"
    assert linear(h.bfloat16()).dtype == torch.float32
    with pytest.raises(ConfigError):
        Extractor(10, 4, "mlp")


@pytest.mark.parametrize("bad", [{"tau": 0}, {"aux_every": 0}, {"variant": "kl"}, {"pooling": "first"},
                                 {"extractor": "mlp"}, {"batching": "fused"}, {"buckets": "yes"}, {"lam": -1},
                                 {"lang_weights": {"en": -1.0}}])
def test_mlc_config_validation(bad):
    with pytest.raises(ConfigError):
        MLCConfig(**bad).validate()


def test_prompt_states_match_extract_and_carry_gradients(tiny_llama):
    """Training reads the same vectors as extraction (one 'last prompt token'), padding aside."""
    from mlcwb.extract import encode_with_content, extract

    model, tok = tiny_llama
    texts = ["hello", "a much longer prompt in english", "bonjour tout le monde"]
    reps = extract(model, tok, texts, layers=[-1, 2], pooling="content_mean")
    enc = encode_with_content(tok, texts)
    for layer, hs_index in ((-1, 4), (2, 2)):
        states = prompt_states(model, enc["input_ids"], enc["attention_mask"], layer, "content_mean",
                               enc["content_mask"])
        expected = torch.from_numpy(reps.values[:, 0, reps.layers.index(hs_index)])
        assert torch.allclose(states.detach(), expected, atol=1e-4), layer
    last = prompt_states(model, enc["input_ids"], enc["attention_mask"])
    alone = prompt_states(model, *(encode_with_content(tok, [texts[0]])[k]
                                   for k in ("input_ids", "attention_mask")))
    assert torch.allclose(last[0], alone[0], atol=1e-4), "left padding must not change a prompt's state"
    z = Extractor(64, 8)(last).view(1, 3, 8)
    mlc_loss(z).backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    for bad_layer in (9, -6):  # one check for training and extraction: the same error, same words
        with pytest.raises(ExtractionError, match=rf"Layer {bad_layer} is out of range.*0\.\.4") as got:
            prompt_states(model, enc["input_ids"], enc["attention_mask"], layer=bad_layer)
        with pytest.raises(ExtractionError) as expected:
            extract(model, tok, texts, layers=[bad_layer], progress=False)
        assert str(got.value) == str(expected.value)


# --------------------------------------------------------------------------- contrastive variant

def _groups(n_prompts: int, n_langs: int, dim: int = 16, noise: float = 0.0, seed: int = 0):
    """Each prompt one random direction, its languages that direction plus noise."""
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(n_prompts, 1, dim, generator=g)
    return base + noise * torch.randn(n_prompts, n_langs, dim, generator=g)


def test_contrastive_penalises_collapse_that_the_official_loss_rewards():
    from mlcwb.mlc import contrastive_loss

    distinct = _groups(4, 5)                       # translations collinear, prompts apart
    collapsed = _groups(1, 5).expand(4, 5, 16)     # every prompt the same direction
    assert mlc_loss(collapsed).item() == pytest.approx(mlc_loss(distinct).item(), abs=1e-5)
    assert mlc_loss(collapsed).item() == pytest.approx(mlc_floor(5), abs=1e-4)
    worst = math.log(4 * 5 - 1)                    # all rows identical: each positive 1 of 19
    assert contrastive_loss(collapsed).item() == pytest.approx(worst, abs=1e-4)
    assert contrastive_loss(distinct).item() < worst - 1.0


def test_contrastive_gradient_pushes_collapsed_prompts_apart():
    from mlcwb.mlc import contrastive_loss

    g = torch.Generator().manual_seed(1)
    z = (_groups(1, 3, seed=1).expand(3, 3, 16) + 0.1 * torch.randn(3, 3, 16, generator=g)).requires_grad_()
    opt = torch.optim.Adam([z], lr=0.1)
    first = contrastive_loss(z).item()
    for _ in range(30):
        opt.zero_grad()
        contrastive_loss(z).backward()
        opt.step()
    zn = torch.nn.functional.normalize(z.detach(), dim=-1)
    across = (zn[0, 0] @ zn[1, 0]).item()
    assert contrastive_loss(z).item() < first - 0.3 and across < 0.9


def test_contrastive_needs_two_prompts_and_weights_change_it():
    from mlcwb.mlc import contrastive_loss

    with pytest.raises(ConfigError, match="mlc.batch_size"):
        contrastive_loss(torch.randn(1, 3, 8))
    z = _groups(3, 3, noise=0.8, seed=2)
    plain = contrastive_loss(z).item()
    assert contrastive_loss(z, weights=[2.0, 2.0, 2.0]).item() == pytest.approx(plain, abs=1e-6)
    assert contrastive_loss(z, weights=[1.0, 0.0, 3.0]).item() != pytest.approx(plain, abs=1e-4)


def test_mlc_term_reads_prompt_major_rows_for_every_variant():
    from mlcwb.mlc import mlc_term

    z = _groups(3, 4, noise=0.5, seed=3)
    flat = z.reshape(12, 16)
    for variant in ("official", "cosine", "contrastive"):
        cfg = MLCConfig(variant=variant)
        assert mlc_term(flat, 4, cfg).item() == pytest.approx(mlc_objective(z, cfg).item(), abs=1e-6)
    with pytest.raises(ConfigError, match="groups of 5"):
        mlc_term(flat, 5, MLCConfig())


# --------------------------------------------------------------------------- collapse diagnostics

def test_batch_distinctness_separates_collapse_from_consistency():
    from mlcwb.collapse import batch_distinctness

    healthy = batch_distinctness(_groups(4, 3, noise=0.1).reshape(12, 16), 3)
    collapsed = batch_distinctness(_groups(1, 3, noise=0.1).expand(4, 3, 16).reshape(12, 16), 3)
    assert healthy["retrieval"] == 1.0 and healthy["margin"] > 0.5
    assert collapsed["prompt_cos"] > 0.98 and abs(collapsed["margin"]) < 0.05
    assert collapsed["retrieval"] <= 0.5


def test_opening_diversity_flags_one_opening_everywhere():
    import pandas as pd

    from mlcwb.collapse import opening, opening_diversity

    assert opening("Hey there, I'm here to help you!") == "hey there i m"
    frame = pd.DataFrame({
        "lang": ["en"] * 4 + ["zh"] * 4,
        "response": ["I'm sorry, but I can't help.", "Paris is the capital.", "Sure: step one",
                     "I'm sorry, but I can't do that.",
                     "嗨，我是来帮助你的", "嗨，我是来帮助你的！", "嗨，我是来帮助你的。", "巴黎"]})
    div = opening_diversity(frame)
    assert div.loc["en", "top_opening_share"] == 0.5 and not div.loc["en", "collapsed"]
    assert div.loc["zh", "top_opening_share"] == 0.75 and div.loc["zh", "collapsed"]


def test_collapse_watch_warns_once_when_prompts_merge(caplog):
    from mlcwb.collapse import CollapseWatch

    watch = CollapseWatch(threshold=0.98)
    rows = [{"step": 1, "prompt_cos": 0.87}, {"step": 2, "prompt_cos": 0.95},
            {"step": 3, "prompt_cos": 0.99}, {"step": 4, "prompt_cos": 0.999}]
    with caplog.at_level("WARNING", logger="mlcwb.collapse"):
        flags = [watch.check(r) for r in rows]
    assert flags == [False, False, True, False]
    assert "collapsing" in caplog.text and "step 3" in caplog.text
    assert not CollapseWatch().check({"step": 1, "prompt_cos": 0.99})  # started there: no news


def test_heldout_distinctness_reads_representations(tiny_llama):
    from mlcwb.collapse import heldout_distinctness
    from mlcwb.extract import extract

    model, tok = tiny_llama
    texts = {"en": ["one apple", "a red car", "the sea"], "de": ["ein Apfel", "ein rotes Auto", "das Meer"]}
    from mlcwb.data import Prompt, PromptSet

    prompts = PromptSet([Prompt(id=f"p{i}", text={l: texts[l][i] for l in texts}, harmful=i == 0, category="t")
                         for i in range(3)])
    reps = extract(model, tok, prompts, langs=["en", "de"], layers=[0, -1], pooling="content_mean",
                   progress=False)
    out = heldout_distinctness(reps, reps.layers[-1])
    assert set(out) == {"pair_cos", "prompt_cos", "margin", "retrieval"}
    assert -1 <= out["prompt_cos"] <= 1 and 0 <= out["retrieval"] <= 1
    assert out["margin"] == pytest.approx(out["pair_cos"] - out["prompt_cos"])


def test_balanced_subset_has_both_labels():
    from mlcwb.data import load_corpus

    test = load_corpus().select(split="test", langs=["en"])
    sub = test.balanced(10, seed=1)
    assert len(sub) == 10 and sum(p.harmful for p in sub) == 5
    assert sub.ids == [i for i in test.ids if i in set(sub.ids)]
    assert test.balanced(10, seed=1).ids == sub.ids != test.balanced(10, seed=2).ids


def test_package_names_its_entry_points_and_imports_them_lazily():
    """``import mlcwb`` loads no torch; each curated name is the object its module defines."""
    import subprocess
    import sys

    code = ("import sys, importlib, mlcwb\n"
            "assert 'torch' not in sys.modules, 'import mlcwb loaded torch'\n"
            "for name, module in mlcwb._ENTRY_POINTS.items():\n"
            "    assert getattr(mlcwb, name) is getattr(importlib.import_module(module), name), name\n"
            "assert set(mlcwb.__all__) == {'__version__', *mlcwb._ENTRY_POINTS} <= set(dir(mlcwb))\n"
            "try:\n"
            "    mlcwb.no_such_name\n"
            "except AttributeError:\n"
            "    pass\n"
            "else:\n"
            "    raise AssertionError('unknown names must raise AttributeError')\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
