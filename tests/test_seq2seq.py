"""Encoder-decoder training on the tiny seeded T5: answer scores, encoder MLC states, runs, resume."""

from __future__ import annotations

import math

import pytest
import torch
from safetensors.torch import load_file

from mlcwb.checkpoints import load_extractor
from mlcwb.errors import ConfigError, ExtractionError
from mlcwb.mlc import Extractor, MLCConfig, mlc_loss
from mlcwb.models import load_model
from mlcwb.prompt_states import prompt_states
from mlcwb.seq2seq import answer_logps, collate_seq2seq, encoder_states, is_encoder_decoder
from mlcwb.train import train
from mlcwb.train_data import encode_mlc, prepare_data
from mlcwb.train_module import TrainModule, collator
from tests.test_train import LANGS, tiny_config, tiny_prompts


def t5_config(tmp_path, **changes):
    return tiny_config(tmp_path, **{"model": "tiny-random-t5", **changes})


def test_t5_answer_logprobs_match_the_models_own_loss(tmp_path, tiny_t5):
    model, tok = tiny_t5
    data = prepare_data(t5_config(tmp_path), tiny_prompts(), tok)
    batch = collate_seq2seq(data.align[:3], tok.pad_token_id, dpo=True)
    assert collator(model, tok.pad_token_id)(data.align[:3], True).keys() == batch.keys()
    with torch.no_grad():
        logps, lengths = answer_logps(model, batch)
        for row, example in enumerate(data.align[:3] + data.align[:3]):
            answer = example.chosen_ids if row < 3 else example.rejected_ids
            labels = torch.tensor([answer])
            nll = model(input_ids=torch.tensor([example.prompt_ids]), labels=labels).loss
            assert lengths[row] == len(answer)
            assert logps[row].item() == pytest.approx(-nll.item() * len(answer), rel=1e-4)


def test_encoder_states_are_what_extract_reads_and_ignore_padding(tiny_t5):
    from mlcwb.extract import extract

    model, tok = tiny_t5
    texts = ["Hi.", "A much longer prompt, with many more words in it.", "Mittel lang."]
    enc = encode_mlc(tok, [texts], True)
    with torch.no_grad():
        states = encoder_states(model, enc["input_ids"], enc["attention_mask"],
                                content_mask=enc["content_mask"])
        alone = encoder_states(model, enc["input_ids"][:1, :int(enc["attention_mask"][0].sum())],
                               enc["attention_mask"][:1, :int(enc["attention_mask"][0].sum())],
                               content_mask=enc["content_mask"][:1, :int(enc["attention_mask"][0].sum())])
    reps = extract(model, tok, texts, langs="en", layers=[-1], pooling="content_mean", progress=False)
    assert torch.allclose(states, torch.from_numpy(reps.values[:, 0, 0]), atol=1e-5)
    assert torch.allclose(states[:1], alone, atol=1e-5)
    with pytest.raises(ExtractionError, match=r"Layer 9 is out of range.*0\.\.2"):
        encoder_states(model, enc["input_ids"], enc["attention_mask"], layer=9)
    with pytest.raises(ConfigError, match="encoder attends both ways"):
        prompt_states(model, enc["input_ids"], enc["attention_mask"], bucketed=True)


def test_encoder_decoder_refuses_the_decoder_only_official_batching(tiny_t5):
    model, tok = tiny_t5
    assert is_encoder_decoder(model) and not is_encoder_decoder(load_model("tiny-random-llama")[0])
    with pytest.raises(ConfigError, match="encoder"):
        TrainModule(model, Extractor(64, 8), batching="official", pad_id=tok.pad_token_id)


def _encoder_objective(model, tok, prompts) -> float:
    enc = encode_mlc(tok, [[p.text[lang] for lang in LANGS] for p in prompts], True)
    model.eval()
    with torch.no_grad():
        states = encoder_states(model, enc["input_ids"], enc["attention_mask"],
                                content_mask=enc["content_mask"])
    return mlc_loss(states.view(len(prompts), len(LANGS), -1)).item()


@pytest.mark.slow
def test_t5_mlc_training_lowers_the_mlc_loss(tmp_path):
    """A frozen extractor: the loss can only fall by moving the encoder's own states."""
    model, tok = load_model("tiny-random-t5", device="cpu")
    prompts = tiny_prompts()
    before = _encoder_objective(model, tok, prompts)
    config = t5_config(tmp_path, align="none", epochs=4, lr=1e-2,
                       mlc=MLCConfig(batch_size=8, extractor="frozen", extractor_dim=16, aux_every=1))
    result = train(config, model, tok, prompts)
    logged = [r["mlc_loss"] for r in result.log]
    assert len(logged) == 4 and logged[-1] < 0.6 * logged[0], logged
    assert _encoder_objective(model, tok, prompts) < before - 0.01


@pytest.mark.slow
def test_t5_dpo_plus_mlc_trains_saves_and_reloads(tmp_path):
    result = train(t5_config(tmp_path, epochs=2), prompts=tiny_prompts())
    rows = result.log
    assert [r["step"] for r in rows] == list(range(1, 9))
    assert all(("mlc_loss" in r) == (r["step"] % 2 == 1) for r in rows)
    assert all(math.isfinite(r["loss"]) for r in rows) and rows[-1]["align_loss"] < rows[0]["align_loss"]
    reloaded, _ = load_model(str(result.final_dir), device="cpu")
    assert is_encoder_decoder(reloaded)
    for name, value in result.model.state_dict().items():
        assert torch.equal(reloaded.state_dict()[name], value), name


@pytest.mark.slow
def test_t5_sft_with_lora_trains_and_merges(tmp_path):
    config = t5_config(tmp_path, align="sft", max_steps=4, lr=3e-3, mlc=MLCConfig(
        batch_size=2, extractor_dim=16, aux_every=1)).replace(lora={"r": 4, "alpha": 8})
    result = train(config, prompts=tiny_prompts())
    assert all("mlc_loss" in r and math.isfinite(r["align_loss"]) for r in result.log)
    assert result.log[-1]["align_loss"] < result.log[0]["align_loss"]
    merged, _ = load_model(str(result.final_dir), device="cpu")
    assert not any("lora" in k for k in merged.state_dict())


@pytest.mark.slow
def test_t5_run_stopped_by_max_steps_resumes_to_the_same_weights(tmp_path):
    """Stop after 3 of 8 steps (checkpoint at 2), continue; end where an unbroken run ends.
    Dropout is on in T5, so this also pins that the resumed run replays the saved RNG state."""
    config = t5_config(tmp_path, epochs=2, save_every=2, output_dir=str(tmp_path / "stopped"))
    first = train(config.replace(max_steps=3), prompts=tiny_prompts())
    assert [r["step"] for r in first.log] == [1, 2, 3]
    resumed = train(config, prompts=tiny_prompts())
    assert resumed.resumed_from == 2 and [r["step"] for r in resumed.log] == list(range(1, 9))
    unbroken = train(config.replace(output_dir=str(tmp_path / "unbroken")), prompts=tiny_prompts())
    ours = load_file(resumed.final_dir / "model.safetensors")
    for name, value in load_file(unbroken.final_dir / "model.safetensors").items():
        assert torch.allclose(ours[name], value, atol=1e-6, rtol=0), name
    assert torch.allclose(load_extractor(resumed.final_dir).proj.weight,
                          unbroken.extractor.proj.weight, atol=1e-6, rtol=0)


def test_trl_bridge_points_encoder_decoders_to_mlcwb_train(tiny_t5):
    from types import SimpleNamespace

    from mlcwb.trl_bridge import MLCTrainerMixin

    model, tok = tiny_t5

    class Parent:
        def __init__(self, model, args, processing_class):
            self.model, self.args, self.processing_class = model, args, processing_class

    with pytest.raises(ConfigError, match="mlcwb.train"):
        type("Bridge", (MLCTrainerMixin, Parent), {})(
            model, SimpleNamespace(seed=0), tok, mlc_prompts=[["a", "b"], ["c", "d"]])
