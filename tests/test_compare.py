"""Notebook 05's steps (``mlcwb.compare``) and the language rule notebooks 04 and 05 share."""

from __future__ import annotations

import pandas as pd

from mlcwb.compare import comparison_prompts, trained_methods
from mlcwb.data import load_corpus
from mlcwb.languages import PAPER_LANGUAGES, study_languages
from mlcwb.paths import open_run_dir
from mlcwb.viz import training_figures


def test_study_languages_prefers_the_request_then_the_papers_languages():
    assert study_languages(["en", "fr", "zh"], ["fr", "en"]) == ["fr", "en"]
    assert study_languages(["en", "fr", "zh", "ru"]) == ["en", "zh", "ru"]
    assert all(lang in PAPER_LANGUAGES for lang in study_languages(["en", "fr", "zh", "ru"]))
    assert study_languages(["fr", "de"]) == ["fr", "de"]  # none of the paper's: keep what there is


def test_comparison_prompts_are_the_first_of_each_label_in_the_test_split():
    corpus = load_corpus()
    chosen = comparison_prompts(corpus, ["en", "zh"], n_harmful=3, n_benign=2)
    test = corpus.select(langs=["en", "zh"], split="test")
    assert chosen.select(harmful=True).ids == test.select(harmful=True).ids[:3]
    assert chosen.select(harmful=False).ids == test.select(harmful=False).ids[:2]
    assert len(chosen) == 5 and {p.split for p in chosen} == {"test"}
    assert chosen.languages == ["en", "zh"]


def test_trained_methods_lists_final_checkpoints_in_arm_order(tmp_path):
    for arm in ("mlc_only", "align"):
        (tmp_path / "checkpoints" / arm / "final").mkdir(parents=True)
        (tmp_path / "checkpoints" / arm / "final" / "config.json").write_text("{}")
    (tmp_path / "checkpoints" / "mlc" / "final").mkdir(parents=True)  # unfinished: no config.json
    methods = trained_methods(tmp_path, "base-model")
    assert list(methods) == ["raw", "align", "mlc_only"]
    assert methods["raw"] == "base-model"
    assert methods["align"] == str(tmp_path / "checkpoints" / "align" / "final")


def test_open_run_dir_is_absolute_and_created(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run = open_run_dir("runs/x")
    assert run.is_absolute() and run.is_dir() and run == tmp_path / "runs" / "x"


def test_training_figures_draw_mlc_and_collapse_only_where_mlc_ran():
    align_only = pd.DataFrame({"step": [1, 2], "align_loss": [1.0, 0.5], "run": "align"})
    assert list(training_figures(align_only, "sft")) == ["04_align_loss"]
    mlc = pd.DataFrame({"step": [1, 2], "align_loss": [1.0, 0.6], "mlc_loss": [0.3, 0.2],
                        "mlc_loss_ref": [0.3, 0.25], "pair_cos": [0.4, 0.6], "prompt_cos": [0.8, 0.7],
                        "run": "mlc"})
    figs = training_figures(pd.concat([align_only, mlc]), "sft", mlc_floor=0.03)
    assert list(figs) == ["04_align_loss", "04_mlc_loss", "04_collapse_watch"]
    assert {t.name for t in figs["04_collapse_watch"].data} == {"mlc, pair_cos", "mlc, prompt_cos"}
    assert any(shape["y0"] == 0.03 for shape in figs["04_mlc_loss"].layout.shapes)


def test_evaluate_methods_loads_each_model_once_for_every_prompt_set(tmp_path, monkeypatch):
    import mlcwb.compare as compare
    from mlcwb.judge_markers import RefusalJudge

    loads = []
    real = compare.load_model
    monkeypatch.setattr(compare, "load_model", lambda *a, **k: loads.append(a) or real(*a, **k))
    corpus = load_corpus()
    prompts = comparison_prompts(corpus, ["en"], n_harmful=1, n_benign=1)
    jail = comparison_prompts(corpus, ["en", "zh"], n_harmful=2, n_benign=0)
    result = compare.evaluate_methods({"raw": "tiny-random-llama"}, prompts, ["en"], RefusalJudge(),
                                      tmp_path, max_new_tokens=2, batch_size=2, n_boot=20,
                                      utility_set=prompts, utility_limit=1,
                                      extra_sets={"jail": (jail, ["zh"])}, device="cpu")
    assert len(loads) == 1
    assert (tmp_path / "raw.jsonl").is_file() and (tmp_path / "jail_raw.jsonl").is_file()
    assert list(result.extra["jail"].metrics["raw"].index) == ["zh"]
    assert len(result.extra["jail"].judged["raw"]) == 2 and len(result.judged["raw"]) == 2
    assert (tmp_path / "raw.utility.json").is_file() and set(result.utility["raw"]) == {"en"}
