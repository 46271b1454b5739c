"""Training options that change behaviour, each shown by a number that moves (issue #26).

Every run is a few steps of the tiny random Llama on a handful of prompts (seconds of CPU). The
model is loaded once per module and deep-copied for each run, since ``train`` trains in place.
With AdamW the first step moves every weight whose gradient is well above ``eps`` by almost
exactly the lr (``m / sqrt(v)`` is ``g / |g|``), which turns "the lr that was used" into a
measurable weight displacement.
"""

from __future__ import annotations

import copy
import logging
import math
from pathlib import Path

import pytest
import torch

from mlcwb.data import Prompt, PromptSet
from mlcwb.mlc import Extractor, MLCConfig
from mlcwb.train import train
from mlcwb.train_config import TrainConfig

LANGS = ["en", "de", "fr"]
HIDDEN = 64  # tiny-random-llama's hidden size
EXT_DIM = 16
WEIGHT = "model.layers.0.self_attn.q_proj.weight"  # in every forward: always has a gradient
MLC_ON: dict = {}  # config()'s default: the MLC term with the settings below, unchanged


@pytest.fixture(scope="module")
def tiny():
    from mlcwb.models import load_model

    return load_model("tiny-random-llama", device="cpu")


def prompts(n: int = 4, long: dict[int, str] | None = None) -> PromptSet:
    """``n`` prompts in three languages (German deliberately longer, so length buckets split);
    ``long`` replaces the English text of the given prompts."""
    rows = []
    for i in range(n):
        harmful = i % 2 == 0
        german = f"Wie mache ich das Ding Nummer {i}, Schritt fuer Schritt erklaert?"
        rows.append(Prompt(
            id=f"p{i}", harmful=harmful, category="test",
            text={"en": (long or {}).get(i, f"How do I do thing {i}?"),
                  "de": german * (1 + i % 2), "fr": f"Comment faire la chose {i} ?"},
            response="I can't help with that." if harmful else f"Here is how: step {i}.",
            rejected=f"Sure, here is how to do {i}." if harmful else None))
    return PromptSet(rows, "tiny-options")


def config(tmp_path: Path, name: str, mlc: dict | None = MLC_ON, **changes) -> TrainConfig:
    """SFT (no reference pass) + MLC on every step, lr 1e-3, one epoch of 4 prompts: 2 steps.
    ``mlc``: changes to those MLC settings, or None for no MLC term."""
    settings = None if mlc is None else MLCConfig(
        **{"batch_size": 2, "extractor_dim": EXT_DIM, "aux_every": 1, **mlc})
    base = dict(model="tiny-random-llama", mlc_languages=LANGS, align="sft", epochs=1, batch_size=2,
                lr=1e-3, precision="no", device="cpu", output_dir=str(tmp_path / name),
                mlc=settings)
    base.update(changes)
    return TrainConfig(**base).validate()


def run(tiny, cfg: TrainConfig, data: PromptSet | None = None):
    model, tok = tiny
    return train(cfg, copy.deepcopy(model), tok, data if data is not None else prompts())


def initial_state(tiny) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in tiny[0].state_dict().items()}


def max_move(after: dict[str, torch.Tensor], before: dict[str, torch.Tensor]) -> float:
    return max(float((after[k] - before[k]).abs().max()) for k in before)


def rows_of(result, key: str) -> list:
    return [r[key] for r in result.log]


# ------------------------------------------------------------------ mlc.extractor_lr

@pytest.mark.slow
def test_extractor_lr_sets_the_extractors_step_and_only_its(tmp_path, tiny):
    """One step: the model always moves by ~lr; the extractor by ~extractor_lr (0: not at all)."""
    from mlcwb.checkpoints import load_extractor

    before_model = initial_state(tiny)
    initial = Extractor(HIDDEN, EXT_DIM, "linear", seed=0).state_dict()
    moved = {}
    for ext_lr in (0.0, None, 1e-2):
        cfg = config(tmp_path, f"ext{ext_lr}", mlc={"extractor_lr": ext_lr}, max_steps=1)
        result = run(tiny, cfg)
        assert "mlc_loss" in result.log[0]
        saved = load_extractor(result.final_dir).state_dict()
        moved[ext_lr] = max_move(saved, initial)
        assert max_move(result.model.state_dict(), before_model) == pytest.approx(1e-3, rel=0.02)
    assert moved[0.0] == 0.0, "extractor_lr 0 must leave the extractor exactly as drawn"
    assert moved[None] == pytest.approx(1e-3, rel=0.02), "None: the model's lr"
    assert moved[1e-2] == pytest.approx(1e-2, rel=0.02)


# ------------------------------------------------------------------ warmup_steps

def _record_lrs(monkeypatch) -> list[float]:
    """The lr each optimizer step actually uses (the first group: the model's)."""
    used: list[float] = []
    real_step = torch.optim.AdamW.step

    def step(self, *args, **kwargs):
        used.append(self.param_groups[0]["lr"])
        return real_step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.AdamW, "step", step)
    return used


@pytest.mark.slow
def test_warmup_steps_ramp_the_lr_linearly(tmp_path, tiny, monkeypatch):
    lr, warmup = 1e-3, 3
    used = _record_lrs(monkeypatch)
    ramped = run(tiny, config(tmp_path, "warm", warmup_steps=warmup, epochs=3, mlc=None))
    assert ramped.steps == 6
    expected = [lr * min(1.0, (s + 1) / (warmup + 1)) for s in range(6)]  # 1/4, 2/4, 3/4, 1, 1, 1
    assert used == pytest.approx(expected)
    logged = rows_of(ramped, "lr")
    assert all(a < b for a, b in zip(logged[:warmup - 1], logged[1:warmup])), logged
    assert logged[0] < lr and logged[-1] == pytest.approx(lr)

    used.clear()
    flat = run(tiny, config(tmp_path, "flat", warmup_steps=0, epochs=2, max_steps=3, mlc=None))
    assert used == pytest.approx([lr] * 3)
    assert rows_of(flat, "lr") == pytest.approx([lr] * 3)


@pytest.mark.slow
def test_the_logged_lr_is_the_lr_the_step_used(tmp_path, tiny, monkeypatch):
    used = _record_lrs(monkeypatch)
    result = run(tiny, config(tmp_path, "warm", warmup_steps=3, epochs=2, max_steps=3, mlc=None))
    assert len(used) == 3
    assert rows_of(result, "lr") == pytest.approx(used)


# ------------------------------------------------------------------ sequential_mlc_epochs

@pytest.mark.slow
@pytest.mark.parametrize("mlc_epochs", [1, 3])
def test_sequential_mlc_epochs_sets_the_length_of_the_mlc_phase(tmp_path, tiny, mlc_epochs):
    """4 prompts, batch 2: 2 alignment steps, then 2 MLC-only steps per MLC epoch."""
    result = run(tiny, config(tmp_path, f"seq{mlc_epochs}", schedule="sequential",
                              sequential_mlc_epochs=mlc_epochs))
    phases = rows_of(result, "phase")
    assert phases == ["align"] * 2 + ["mlc"] * (2 * mlc_epochs)
    mlc_rows = [r for r in result.log if r["phase"] == "mlc"]
    assert [r["epoch"] for r in mlc_rows] == [e for e in range(mlc_epochs) for _ in range(2)]
    assert all("mlc_loss" in r and "align_loss" not in r for r in mlc_rows)
    assert result.steps == 2 + 2 * mlc_epochs


# ------------------------------------------------------------------ max_length

@pytest.mark.slow
def test_max_length_skips_prompts_that_leave_no_room_and_says_so(tmp_path, tiny, caplog):
    """Two of six English prompts are 500 characters (500+ tokens): with max_length 200 they are
    skipped from the alignment data (6 -> 4 examples: 3 -> 2 steps of 2), logged with a count;
    the kept examples' answers are cut so prompt + answer fits max_length."""
    from mlcwb.train_data import prepare_data

    data = prompts(6, long={1: "x" * 500, 4: "y" * 500})
    full = run(tiny, config(tmp_path, "full", mlc=None, max_length=1024), data)
    assert full.steps == 3

    with caplog.at_level(logging.INFO, logger="mlcwb.train_data"):
        short = run(tiny, config(tmp_path, "short", mlc=None, max_length=200), data)
    assert short.steps == 2
    assert any("skipped" in r.getMessage() and "'too_long': 2" in r.getMessage()
               for r in caplog.records), [r.getMessage() for r in caplog.records]

    cut = prepare_data(config(tmp_path, "cut", mlc=None, max_length=45), prompts(4), tiny[1])
    assert cut.skipped["too_long"] == 0 and len(cut.align) == 4
    assert all(len(e.prompt_ids) + len(e.chosen_ids) <= 45 for e in cut.align)
    uncut = prepare_data(config(tmp_path, "uncut", mlc=None), prompts(4), tiny[1])
    assert sum(map(len, (e.chosen_ids for e in cut.align))) < \
        sum(map(len, (e.chosen_ids for e in uncut.align)))


# ------------------------------------------------------------------ max_grad_norm

@pytest.mark.slow
def test_max_grad_norm_clips_what_reaches_the_optimizer(tmp_path, tiny, monkeypatch):
    """The logged grad_norm is the norm before clipping (equal in both runs); the optimizer sees
    it clipped to max_grad_norm. AdamW is blind to a uniform gradient scale, so the clip shows as
    a smaller step only where it pushes gradients under Adam's eps, which 1e-9 does."""
    seen: list[float] = []
    real_step = torch.optim.AdamW.step

    def step(self, *args, **kwargs):
        grads = [p.grad for g in self.param_groups for p in g["params"] if p.grad is not None]
        seen.append(float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g)
                                                                for g in grads]))))
        return real_step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.AdamW, "step", step)
    before = initial_state(tiny)
    free = run(tiny, config(tmp_path, "free", max_grad_norm=None, max_steps=1))
    free_seen = seen[:]
    seen.clear()
    clipped = run(tiny, config(tmp_path, "clipped", max_grad_norm=1e-9, max_steps=1))

    logged = rows_of(free, "grad_norm")[0]
    assert logged > 1e-3
    assert rows_of(clipped, "grad_norm")[0] == pytest.approx(logged, rel=1e-5)
    assert free_seen[0] == pytest.approx(logged, rel=1e-4)
    assert seen[0] == pytest.approx(1e-9, rel=1e-3)
    free_move = max_move(free.model.state_dict(), before)
    clipped_move = max_move(clipped.model.state_dict(), before)
    assert free_move == pytest.approx(1e-3, rel=0.02)
    assert clipped_move < 0.05 * free_move


def test_a_negative_max_grad_norm_is_a_config_error():
    from mlcwb.errors import ConfigError

    with pytest.raises(ConfigError, match="max_grad_norm"):
        TrainConfig(max_grad_norm=-1.0).validate()


# ------------------------------------------------------------------ weight_decay

@pytest.mark.slow
def test_weight_decay_shrinks_the_model_but_not_the_extractor(tmp_path, tiny):
    """AdamW's decoupled decay multiplies each weight by (1 - lr x wd) a step: 0.95 here, so two
    steps leave 0.9025 of a weight's norm, next to which Adam's 1e-3 steps barely register. The
    extractor's group has no decay (mlcwb.train's optimizer), so its norm is kept."""
    from mlcwb.checkpoints import load_extractor

    norms = {}
    for wd in (0.0, 50.0):
        result = run(tiny, config(tmp_path, f"wd{wd}", weight_decay=wd))
        assert result.steps == 2
        ext = load_extractor(result.final_dir)
        with torch.no_grad():
            norms[wd] = (float(result.model.state_dict()[WEIGHT].norm()),
                         float(ext.proj.weight.norm()))
    model_ratio = norms[50.0][0] / norms[0.0][0]
    ext_ratio = norms[50.0][1] / norms[0.0][1]
    assert model_ratio == pytest.approx(0.95 ** 2, abs=0.01)
    assert ext_ratio == pytest.approx(1.0, abs=0.005)


# ------------------------------------------------------------------ mlc.buckets

@pytest.mark.slow
def test_buckets_none_and_length_compute_the_same_loss_at_different_cost(tmp_path, tiny):
    """Length buckets are a speed choice, not a math one: MLC-only runs with and without them log
    the same losses and gradient norms, while the bucketed one computes fewer positions."""
    results = {b: run(tiny, config(tmp_path, b, align="none", mlc={"buckets": b}))
               for b in ("none", "length")}
    none, length = results["none"], results["length"]
    assert none.steps == length.steps == 2
    assert rows_of(length, "mlc_loss") == pytest.approx(rows_of(none, "mlc_loss"), abs=1e-5)
    assert rows_of(length, "grad_norm")[0] == pytest.approx(rows_of(none, "grad_norm")[0], rel=1e-4)
    assert all(math.isfinite(v) for v in rows_of(length, "mlc_loss"))
    positions = {b: rows_of(r, "positions") for b, r in results.items()}
    assert all(a < b for a, b in zip(positions["length"], positions["none"])), positions
    assert rows_of(length, "tokens") == rows_of(none, "tokens")
