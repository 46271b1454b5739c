"""The answer-language term (``mlc.answer_kl``): the coarse KL, the reference's openings, and the
term in training on the tiny model."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from mlcwb.answer_kl import coarse_kl, encode_openings, opening_logps, reference_openings
from mlcwb.errors import ConfigError
from mlcwb.mlc import MLCConfig
from mlcwb.prefix import prompt_rows
from mlcwb.train import train

from tests.test_train import LANGS, tiny_config, tiny_prompts


def _logps(shape: tuple[int, ...], seed: int) -> torch.Tensor:
    return torch.log_softmax(torch.randn(*shape, generator=torch.Generator().manual_seed(seed)) * 2, -1)


def _coarse(ref: torch.Tensor, policy: torch.Tensor, m: int) -> torch.Tensor:
    top_ref, ids = ref.topk(m, dim=-1)
    top = policy.gather(-1, ids)
    rest = torch.log((1 - top.exp().sum(-1)).clamp_min(1e-30))
    return coarse_kl(top_ref, top, rest, torch.ones(ref.shape[:-1], dtype=torch.bool))


def test_over_the_whole_vocabulary_it_is_the_kl_and_over_fewer_tokens_a_lower_bound():
    ref, policy = _logps((6, 3, 50), 0), _logps((6, 3, 50), 1)
    exact = F.kl_div(policy, ref, log_target=True, reduction="none").sum(-1).mean()
    assert _coarse(ref, policy, 50) == pytest.approx(float(exact), rel=1e-4)
    for m in (1, 5, 20):
        assert 0 <= float(_coarse(ref, policy, m)) < float(exact)
    assert float(_coarse(ref, ref, 5)) == pytest.approx(0.0, abs=1e-6)


def test_only_valid_positions_count():
    ref, policy = _logps((2, 3, 10), 2), _logps((2, 3, 10), 3)
    top_ref, ids = ref.topk(4, dim=-1)
    top = policy.gather(-1, ids)
    rest = torch.log(1 - top.exp().sum(-1))
    valid = torch.tensor([[True, True, False], [True, False, False]])
    masked = coarse_kl(top_ref, top, rest, valid)
    only = coarse_kl(top_ref[valid][None], top[valid][None], rest[valid][None], torch.ones(1, 3, dtype=torch.bool))
    assert float(masked) == pytest.approx(float(only), rel=1e-6)
    assert float(coarse_kl(top_ref, top, rest, torch.zeros(2, 3, dtype=torch.bool))) == 0.0


def test_the_openings_are_the_greedy_answers_first_tokens_and_score_zero_against_their_model(tiny_llama):
    model, tok = tiny_llama
    groups = [[p.text[lang] for lang in LANGS] for p in tiny_prompts(4)]
    openings = reference_openings(model, tok, groups, k=3, m=8, batch_size=3)
    assert tuple(openings.tokens.shape) == (4, 2, 3) and tuple(openings.top_ids.shape) == (4, 2, 3, 8)
    # the anchor (English) is left out; each other text's opening is its own greedy answer
    texts = [g[1] for g in groups]
    for text, tokens in zip(texts, openings.tokens[:, 0]):
        ids = torch.tensor([prompt_rows(tok, [text])[0]])
        greedy = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=3,
                                do_sample=False, pad_token_id=tok.pad_token_id)[0, ids.shape[1]:]
        assert tokens[:len(greedy)].tolist() == greedy.tolist()
    # the unchanged model, given the prompt and its own first tokens, has KL 0 to them
    flat = [text for g in groups for text in g[1:]]
    target = openings.take(range(4))
    rows = encode_openings(tok, flat, target["tokens"], True, tok.pad_token_id)
    with torch.no_grad():
        top, rest = opening_logps(model, rows["input_ids"], rows["attention_mask"], target["top_ids"])
    assert torch.allclose(top, target["top_logps"], atol=1e-4)
    assert float(coarse_kl(target["top_logps"], top, rest, target["valid"])) < 1e-5


def _answer_kl_run(tmp_path, weight: float, name: str) -> list[dict]:
    config = tiny_config(tmp_path / name, align="sft", lr=3e-3, epochs=2,
                         mlc=MLCConfig(batch_size=2, extractor_dim=16, aux_every=1, lam=0.1,
                                       answer_kl=weight, answer_kl_tokens=3, answer_kl_top=16))
    return [row for row in train(config, prompts=tiny_prompts()).log if "answer_kl" in row]


@pytest.mark.slow
def test_in_training_the_term_starts_at_zero_and_holds_the_openings(tmp_path):
    held, free = _answer_kl_run(tmp_path, 20.0, "held"), _answer_kl_run(tmp_path, 1e-6, "free")
    assert len(held) == len(free) == 8
    # measured: held 0.0003-0.0009 after the first step, free rising to 0.0097 by the eighth
    assert abs(held[0]["answer_kl"]) < 1e-5 and abs(free[0]["answer_kl"]) < 1e-5  # the start is the reference
    assert free[-1]["answer_kl"] > 0.005, "SFT at this lr moves the openings of the other languages"
    late = lambda rows: sum(r["answer_kl"] for r in rows[-4:]) / 4  # noqa: E731
    assert late(held) < 0.25 * late(free)


def test_an_encoder_decoder_is_refused(tmp_path):
    config = tiny_config(tmp_path, model="tiny-random-t5", max_steps=1,
                         mlc=MLCConfig(batch_size=2, extractor_dim=16, aux_every=1, answer_kl=1.0))
    with pytest.raises(ConfigError, match="answer_kl"):
        train(config, prompts=tiny_prompts())


def test_bad_settings_are_config_errors():
    for bad in ({"answer_kl": -1.0}, {"answer_kl_tokens": 0}, {"answer_kl_top": 0}):
        with pytest.raises(ConfigError, match="answer_kl"):
            MLCConfig(**bad).validate()


def test_the_trl_bridge_refuses_it_rather_than_ignore_it(tiny_llama):
    from types import SimpleNamespace

    from mlcwb.trl_bridge import MLCTrainerMixin

    model, tok = tiny_llama

    class Parent:
        def __init__(self, model, args, processing_class):
            self.model, self.args, self.processing_class = model, args, processing_class

    with pytest.raises(ConfigError, match="answer_kl.*mlcwb.train"):
        type("Bridge", (MLCTrainerMixin, Parent), {})(
            model, SimpleNamespace(seed=0), tok, mlc_prompts=[["a", "b"], ["c", "d"]],
            mlc_config=MLCConfig(answer_kl=1.0))
