"""Experiment tracking (``report_to``): TensorBoard gets every log.jsonl row, ``none`` writes nothing,
a tracker that is not installed is a ConfigError, and report_to never restarts a run."""

from __future__ import annotations

from pathlib import Path

import pytest

from mlcwb.errors import ConfigError, TrainingError
from mlcwb.io import read_jsonl
from mlcwb.mlc import MLCConfig
from mlcwb.train import train
from mlcwb.train_config import TrainConfig
from tests.test_train import tiny_config, tiny_prompts

pytest.importorskip("tensorboard")

TAGS = ("loss", "mlc_loss", "lr", "align_loss", "grad_norm", "tokens", "seconds")


def _scalars(output_dir: str | Path) -> dict[str, list[tuple[int, float]]]:
    """(step, value) of every scalar TensorBoard has for the run in ``output_dir``."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    runs = [p for p in (Path(output_dir) / "tracking").iterdir() if p.is_dir()]
    assert len(runs) == 1, runs
    events = EventAccumulator(str(runs[0]))
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def _expected(rows: list[dict], tag: str) -> list[tuple[int, float]]:
    return [(r["step"], r[tag]) for r in rows if tag in r]


def _assert_matches_log(scalars: dict, rows: list[dict]) -> None:
    for tag in TAGS:
        expected = _expected(rows, tag)
        assert [s for s, _ in scalars[tag]] == [s for s, _ in expected], tag
        assert [v for _, v in scalars[tag]] == pytest.approx([v for _, v in expected], rel=1e-5), tag


@pytest.mark.slow
def test_tensorboard_gets_every_number_of_every_logged_row(tmp_path):
    config = tiny_config(tmp_path, max_steps=3, report_to="tensorboard")  # MLC on steps 1 and 3
    result = train(config, prompts=tiny_prompts())
    rows = read_jsonl(Path(config.output_dir) / "log.jsonl")
    assert [r["step"] for r in rows] == [1, 2, 3] and rows == result.log
    scalars = _scalars(config.output_dir)
    assert len(scalars["loss"]) == 3 and len(scalars["lr"]) == 3
    assert [s for s, _ in scalars["mlc_loss"]] == [1, 3]
    _assert_matches_log(scalars, rows)
    numbers = {k for r in rows for k, v in r.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    assert set(scalars) == numbers - {"step"}, "every number of the rows, and nothing else"
    assert "phase" not in scalars
    assert (Path(config.output_dir) / "config.yaml").read_text().count("report_to: tensorboard") == 1


@pytest.mark.slow
def test_report_to_none_writes_nothing_and_turning_tracking_on_still_resumes(tmp_path):
    config = tiny_config(tmp_path, max_steps=2, save_every=1)
    assert config.report_to == "none"
    train(config, prompts=tiny_prompts())
    assert not (Path(config.output_dir) / "tracking").exists()
    assert not list(Path(config.output_dir).rglob("*tfevents*"))

    resumed = train(config.replace(max_steps=3, report_to="tensorboard"), prompts=tiny_prompts())
    assert resumed.resumed_from == 1, "report_to alone must not restart the run"
    scalars = _scalars(config.output_dir)
    assert [s for s, _ in scalars["loss"]] == [2, 3], "only the steps this run logged"
    _assert_matches_log(scalars, [r for r in resumed.log if r["step"] > 1])


@pytest.mark.slow
def test_a_resumed_run_hides_the_steps_logged_after_its_checkpoint(tmp_path):
    config = tiny_config(tmp_path, max_steps=2, save_every=1, report_to="tensorboard")
    train(config, prompts=tiny_prompts())  # logs steps 1-2, checkpoint after step 1
    resumed = train(config.replace(max_steps=3, lr=5e-3), prompts=tiny_prompts())
    assert resumed.resumed_from == 1
    scalars = _scalars(config.output_dir)
    assert [s for s, _ in scalars["loss"]] == [1, 2, 3]
    _assert_matches_log(scalars, resumed.log)  # lr at step 2 is the resumed run's


@pytest.mark.slow
def test_a_fresh_run_clears_the_curves_an_earlier_run_left(tmp_path):
    config = tiny_config(tmp_path, max_steps=2, report_to="tensorboard")
    train(config, prompts=tiny_prompts())
    again = train(config.replace(max_steps=1, resume=False), prompts=tiny_prompts())
    assert [s for s, _ in _scalars(config.output_dir)["loss"]] == [1]
    _assert_matches_log(_scalars(config.output_dir), again.log)


@pytest.mark.slow
def test_a_non_finite_stop_closes_the_trackers(tmp_path, monkeypatch):
    from accelerate.tracking import TensorBoardTracker

    import mlcwb.train as train_module

    finished = []
    real_finish = TensorBoardTracker.finish
    monkeypatch.setattr(TensorBoardTracker, "finish", lambda self: (finished.append(self), real_finish(self)))
    calls = {"n": 0}
    real = train_module.align_objective

    def poisoned(*args, **kwargs):
        calls["n"] += 1
        loss, stats = real(*args, **kwargs)
        return (loss * float("nan") if calls["n"] == 2 else loss), stats

    monkeypatch.setattr(train_module, "align_objective", poisoned)
    config = tiny_config(tmp_path, max_steps=3, report_to="tensorboard")
    with pytest.raises(TrainingError, match="Non-finite loss at step 2"):
        train(config, prompts=tiny_prompts())
    assert len(finished) == 1
    assert [s for s, _ in _scalars(config.output_dir)["loss"]] == [1]


# ------------------------------------------------------------------ the config key

def test_report_to_accepts_none_all_and_tracker_names():
    assert TrainConfig().report_to == "none"
    assert TrainConfig.from_dict({"report_to": "tensorboard"}).report_to == "tensorboard"
    assert TrainConfig.from_dict({"report_to": ["tensorboard"]}).report_to == ["tensorboard"]
    assert TrainConfig.from_dict({"report_to": "all"}).report_to == "all"


@pytest.mark.parametrize("bad", ["comet", ["tensorboard", "neptune"], "tensorbord"])
def test_an_unknown_tracker_is_a_config_error(bad):
    with pytest.raises(ConfigError, match="report_to .*use 'none', 'all', or any of"):
        TrainConfig.from_dict({"report_to": bad})


@pytest.mark.parametrize("name, package", [("wandb", "pip install wandb"), ("mlflow", "pip install mlflow"),
                                           ("tensorboard", "pip install tensorboard")])
def test_a_tracker_that_is_not_installed_names_what_to_install(monkeypatch, name, package):
    import mlcwb.tracking as tracking

    monkeypatch.setattr(tracking, "installed", lambda tracker: tracker != name)
    with pytest.raises(ConfigError, match=f"{name} is not installed; {package}"):
        TrainConfig.from_dict({"report_to": name})
    with pytest.raises(ConfigError, match=f"{name} is not installed"):
        TrainConfig.from_dict({"report_to": ["tensorboard", "wandb", "mlflow"]})
    assert name not in tracking.trackers("all"), "all: every installed one, and only those"


def test_report_to_none_asks_accelerate_for_no_tracker(tmp_path):
    from mlcwb.tracking import tracker_kwargs

    assert tracker_kwargs(TrainConfig(output_dir=str(tmp_path))) == {}
    kwargs = tracker_kwargs(TrainConfig(output_dir=str(tmp_path), report_to="tensorboard"))
    assert kwargs["log_with"] == ["tensorboard"]
    assert Path(kwargs["project_config"].logging_dir) == tmp_path / "tracking"


def test_report_to_round_trips_through_yaml_and_is_in_the_printed_config(tmp_path, capsys):
    from mlcwb.cli import main

    for value in ("tensorboard", ["tensorboard"], "none"):
        path = tmp_path / "c.yaml"
        path.write_text(TrainConfig(report_to=value).to_yaml())
        assert TrainConfig.from_yaml(path).report_to == value
    path.write_text("report_to: none\n")  # YAML reads bare none as text, not null
    assert TrainConfig.from_yaml(path).report_to == "none"
    assert main(["config", "train"]) == 0
    printed = capsys.readouterr().out
    lines = printed.splitlines()
    index = lines.index("report_to: none")
    comment = " ".join(line for line in lines[index - 4:index] if line.startswith("#"))
    assert all(word in comment for word in ("tensorboard", "wandb", "mlflow", "all"))


def test_report_to_is_ignored_when_an_experiment_decides_whether_an_arm_is_the_same_run(tmp_path):
    from mlcwb.experiment import _same_run

    config = tiny_config(tmp_path)
    assert _same_run(config.replace(report_to="tensorboard").to_dict(), config)
    assert not _same_run(config.replace(lr=1.0).to_dict(), config)


def test_the_config_is_flattened_for_the_trackers():
    from mlcwb.tracking import flat_config

    flat = flat_config(TrainConfig(mlc=MLCConfig(lang_weights={"en": 1.0})).to_dict())
    assert flat["mlc.lam"] == MLCConfig().lam and flat["mlc.lang_weights.en"] == 1.0
    assert flat["mlc_languages"] == ",".join(TrainConfig().mlc_languages) and flat["lora"] is None
    assert all(v is None or isinstance(v, (str, int, float, bool)) for v in flat.values())
