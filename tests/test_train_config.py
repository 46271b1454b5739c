"""TrainConfig from YAML: every value gets its declared type, or a ConfigError naming the key.

YAML 1.1 (PyYAML) reads ``6e-7`` as a string and ``no`` as ``False``; these tests pin that a config
written by hand with such values either loads with the right types or fails with one clear message.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from mlcwb.errors import ConfigError, LanguageError
from mlcwb.mlc import MLCConfig
from mlcwb.train_config import RENAMED, LoraSettings, TrainConfig

OFFICIAL = """\
# The official repository's MLC settings, written as a person would.
model: smollm2-135m-instruct
align: dpo
lr: 6e-7
beta: 0.1
epochs: 3
mlc_languages: [en, zh, ru]
mlc:
  lam: 0.8
  aux_every: 2
  tau: 0.2
  layer: -1
  lang_weights: {en: 1, zh: 0.5}
lora:
  r: 8
  target_modules: [q_proj, v_proj]
"""


def _load(tmp_path: Path, text: str) -> TrainConfig:
    path = tmp_path / "cfg.yaml"
    path.write_text(text, encoding="utf-8")
    return TrainConfig.from_yaml(path)


def test_official_mlc_settings_load_with_the_right_types(tmp_path):
    config = _load(tmp_path, OFFICIAL)
    assert config.lr == 6e-7 and type(config.lr) is float
    assert config.beta == 0.1 and type(config.beta) is float
    assert isinstance(config.mlc, MLCConfig)
    assert (config.mlc.lam, config.mlc.aux_every, config.mlc.tau, config.mlc.layer) == (0.8, 2, 0.2, -1)
    assert type(config.mlc.aux_every) is int and type(config.mlc.layer) is int
    assert config.mlc.lang_weights == {"en": 1.0, "zh": 0.5}
    assert all(type(w) is float for w in config.mlc.lang_weights.values())
    assert config.lora == LoraSettings(r=8, target_modules=["q_proj", "v_proj"])


@pytest.mark.parametrize("text, expected", [("2e-5", 2e-5), ("6e-7", 6e-7), ("'0.001'", 1e-3), ("1", 1.0)])
def test_yaml_strings_that_are_floats_become_floats(tmp_path, text, expected):
    config = _load(tmp_path, f"lr: {text}\n")
    assert config.lr == expected and type(config.lr) is float


def test_a_word_for_a_float_names_the_key_value_and_type(tmp_path):
    with pytest.raises(ConfigError, match=r"lr: 'fast' is not a float") as info:
        _load(tmp_path, "lr: fast\n")
    assert "cfg.yaml" in str(info.value)


@pytest.mark.parametrize("raw, value", [({"epochs": "3"}, 3), ({"epochs": 2.0}, 2),
                                        ({"max_steps": "10"}, 10), ({"max_steps": None}, None),
                                        ({"save_every": "1e3"}, 1000)])
def test_ints_from_strings_and_whole_floats(raw, value):
    key = next(iter(raw))
    got = getattr(TrainConfig.from_dict(raw), key)
    assert got == value and type(got) is type(value)


@pytest.mark.parametrize("raw, message", [
    ({"epochs": True}, "epochs: True is not an int"),
    ({"epochs": 2.5}, "epochs: 2.5 is not an int"),
    ({"batch_size": "two"}, "batch_size: 'two' is not an int"),
    ({"mlc": {"aux_every": False}}, "mlc.aux_every: False is not an int"),
    ({"lr": True}, "lr: True is not a float"),
    ({"lr": ".nan"}, "lr: '.nan' is not a float"),
    ({"lr": float("inf")}, "lr: inf is not a finite number"),
    ({"resume": 1}, "resume: 1 is not a bool"),
    ({"resume": "maybe"}, "resume: 'maybe' is not a bool"),
    ({"mlc": {"lang_weights": {"en": "heavy"}}}, r"mlc.lang_weights\['en'\]: 'heavy' is not a float"),
    ({"mlc": 5}, "mlc: 5 is not a mapping of MLCConfig keys"),
    ({"lora": {"r": "big"}}, "lora.r: 'big' is not an int"),
])
def test_wrong_scalar_types_are_config_errors(raw, message):
    with pytest.raises(ConfigError, match=message):
        TrainConfig.from_dict(raw)


def test_bools_from_quoted_words():
    assert TrainConfig.from_dict({"resume": "false"}).resume is False
    assert TrainConfig.from_dict({"chat_template": "yes"}).chat_template is True


def test_lists_and_unions(tmp_path):
    config = _load(tmp_path, "split: [train, test]\nlora: {target_modules: all-linear}\n")
    assert config.split == ["train", "test"] and config.lora.target_modules == "all-linear"
    with pytest.raises(ConfigError, match=r"mlc_languages: 'en' is not a list of str"):
        TrainConfig.from_dict({"mlc_languages": "en"})
    with pytest.raises(ConfigError, match=r"split: 3 is not a str or list of str"):
        TrainConfig.from_dict({"split": 3})


def test_bare_norwegian_code_says_to_quote_it(tmp_path):
    # `no` is Norwegian, and YAML 1.1 reads it as False.
    with pytest.raises(ConfigError, match=r"mlc_languages\[1\]: False is not a str.*quote"):
        _load(tmp_path, "mlc_languages: [en, no]\n")
    with pytest.raises(LanguageError, match=r"mlc_languages\[1\]: unknown language 'no'"):
        _load(tmp_path, "mlc_languages: [en, 'no']\n")  # quoted it is text, and then checked as a code


@pytest.mark.parametrize("raw, message", [
    ({"mlc_languages": ["en", "xx"]}, r"mlc_languages\[1\]: unknown language 'xx'"),
    ({"align_languages": ["zh-CN"]}, r"align_languages\[0\]: write language 'zh-CN' as 'zh'"),
    ({"mlc": {"lang_weights": {"klingon": 1.0}}}, r"mlc.lang_weights\['klingon'\]: unknown language"),
])
def test_language_codes_are_checked_before_any_data_loads(raw, message):
    with pytest.raises(LanguageError, match=message):
        TrainConfig.from_dict(raw)


def test_unknown_nested_keys_still_suggest_the_closest():
    with pytest.raises(ConfigError, match="Did you mean mlc.'aux_every'"):
        TrainConfig.from_dict({"mlc": {"aux_evry": 2}})


@pytest.mark.parametrize("old, new", sorted(RENAMED.items()))
def test_an_old_key_names_its_new_name(tmp_path, old, new):
    with pytest.raises(ConfigError, match=f"{old!r} is now called {new!r}"):
        _load(tmp_path, f"{old}: null\n")
    section, _, key = new.rpartition(".")
    assert hasattr(getattr(TrainConfig(), section) if section else TrainConfig(), key)


def test_replace_converts_too():
    config = TrainConfig().replace(max_steps="5", lr="1e-4")
    assert config.max_steps == 5 and config.lr == 1e-4
    with pytest.raises(ConfigError, match="max_steps"):
        TrainConfig().replace(max_steps="many")


def test_cli_train_with_a_bad_value_prints_a_message_not_a_trace(tmp_path):
    path = tmp_path / "cfg.yaml"
    path.write_text("lr: fast\n")
    proc = subprocess.run([sys.executable, "-m", "mlcwb.cli", "train", str(path)],
                          capture_output=True, text=True)
    assert proc.returncode != 0
    assert "lr: 'fast' is not a float" in proc.stderr and "Traceback" not in proc.stderr


def test_paths_are_accepted_for_text_fields(tmp_path):
    assert TrainConfig().replace(output_dir=tmp_path).output_dir == str(tmp_path)


def test_printed_default_config_lists_the_preference_losses():
    from mlcwb.commands.config import commented_yaml

    text = commented_yaml(TrainConfig())
    assert "one of sigmoid, ipo, hinge, orpo, simpo" in text
    assert "simpo_gamma: 0.5" in text and "orpo_lambda: 0.1" in text
