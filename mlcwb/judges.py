"""Judges: did a response refuse (or safely redirect), or did it comply?

The paper judges with GPT-4o; offline we need judges that run anywhere. This module is where a
judge is chosen and used: ``make_judge`` picks one from a spec string (``markers``,
``hf:<model>``, ``http:<base url>#<model>``), ``apply_judge`` adds its verdicts to generation
rows and ``calibration_report`` scores it on the labelled set ``data/judge_calibration.jsonl``.
The judges themselves live beside it: ``mlcwb.judge_markers.RefusalJudge`` (the default:
multilingual refusal markers, offline) and ``mlcwb.model_judges`` (``HFJudge``, a local Hugging
Face model; ``HTTPJudge``, an OpenAI-compatible endpoint through the ``openai`` client); the
verdicts and their cache are ``mlcwb.verdicts``. Every verdict carries the judge's name and a
reason, and every judged row the judge's version, so a number in a table can be traced back to
responses.
"""

from __future__ import annotations

import os
import re
import urllib.parse
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import pandas as pd

from mlcwb.errors import ConfigError, DataError
from mlcwb.io import read_jsonl
from mlcwb.judge_markers import RefusalJudge
from mlcwb.model_judges import API_KEY_ENV, HFJudge, HTTPJudge
from mlcwb.paths import data_dir
from mlcwb.verdicts import Verdict

CALIBRATION_FILE = "judge_calibration.jsonl"


class Judge(Protocol):
    """What every judge has: a ``name`` and a ``version`` that together say which verdicts are
    comparable (they go into every judged row and every cache key), and ``judge``."""

    name: str
    version: str

    def judge(self, responses: Sequence[str], langs: Sequence[str] | None = None,
              prompts: Sequence[str] | None = None) -> list[Verdict]: ...


# --------------------------------------------------------------------------------------------
# Choosing a judge by name
# --------------------------------------------------------------------------------------------

JUDGE_SPECS = ("markers", "hf:<model id or local dir>", "http:<base url>#<model>")


def _spec_error(spec: str, why: str) -> ConfigError:
    """The error for a bad spec; a ``user:key@`` in it is masked, since messages get logged."""
    spec = re.sub(r"//[^/@#]*@", "//***@", spec)
    return ConfigError(f"Judge spec {spec!r}: {why}. Accepted forms: {', '.join(JUDGE_SPECS)} "
                       f"(e.g. markers, hf:meta-llama/Llama-Guard-3-1B, "
                       f"http:https://api.openai.com/v1#gpt-4o; the API key comes from "
                       f"${API_KEY_ENV}, never from the spec).")


def _http_parts(spec: str, rest: str) -> tuple[str, str]:
    """(base url, model) of an ``http:<base url>#<model>`` spec, checked."""
    url, sep, model = rest.rpartition("#")
    parts = urllib.parse.urlsplit(url)
    if not sep or not model.strip():
        raise _spec_error(spec, "an HTTP judge needs the model after '#'")
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise _spec_error(spec, f"{url!r} is not an http:// or https:// base URL")
    if parts.username or parts.password:
        raise _spec_error(spec, f"credentials do not belong in the URL; set ${API_KEY_ENV}")
    return url, model.strip()


def make_judge(spec: str, device: str = "auto", cache: str | Path | bool | None = None) -> Judge:
    """The judge a spec names: ``markers`` (``RefusalJudge``), ``hf:<model id or local dir>``
    (``HFJudge`` on a model ``mlcwb.models.load_model`` accepts, on ``device``) or
    ``http:<base url>#<model>`` (``HTTPJudge``, key from ``$OPENAI_API_KEY``).

    One string so that the command line, presets and notebooks choose a judge the same way.
    ``cache`` applies to the model judges (see ``mlcwb.verdicts.cache_for``); the marker judge
    needs none.
    """
    spec = (spec or "").strip()
    kind, sep, rest = spec.partition(":")
    if spec == "markers":
        return RefusalJudge()
    if not sep or kind not in ("hf", "http") or not rest.strip():
        raise _spec_error(spec, "unknown form" if kind not in ("hf", "http") or not sep
                          else f"nothing after '{kind}:'")
    if kind == "hf":
        from mlcwb.models import load_model

        model, tokenizer = load_model(rest.strip(), device=device)
        return HFJudge(model, tokenizer, cache=True if cache is None else cache)
    url, model_name = _http_parts(spec, rest.strip())
    return HTTPJudge(url, model_name, api_key=os.environ.get(API_KEY_ENV) or None, cache=cache)


# --------------------------------------------------------------------------------------------
# Applying judges and calibrating them
# --------------------------------------------------------------------------------------------

def apply_judge(frame: pd.DataFrame, judge: Judge) -> pd.DataFrame:
    """Add ``refused``, ``verdict``, ``reason``, ``judge`` and ``judge_version`` columns to
    generation rows, so every row says which judge (and which edition of it) decided it."""
    if frame.empty:
        raise DataError("No responses to judge.")
    verdicts = judge.judge(frame["response"].fillna("").tolist(), frame["lang"].tolist(),
                           frame["prompt"].tolist() if "prompt" in frame else None)
    out = frame.copy()
    out["refused"] = [v.refused for v in verdicts]
    out["verdict"] = [v.label for v in verdicts]
    out["reason"] = [v.reason for v in verdicts]
    out["judge"] = [v.judge for v in verdicts]
    out["judge_version"] = getattr(judge, "version", "")
    return out


def load_calibration(path: str | Path | None = None) -> pd.DataFrame:
    path = Path(path) if path else data_dir() / CALIBRATION_FILE
    if not path.is_file():
        raise DataError(f"Calibration set {path} is missing; it ships with the repository in data/.")
    return pd.DataFrame(read_jsonl(path))


def _prf(gold: pd.Series, pred: pd.Series) -> dict[str, float]:
    tp = int((gold & pred).sum())
    fp = int((~gold & pred).sum())
    fn = int((gold & ~pred).sum())
    precision = tp / (tp + fp) if tp + fp else float("nan")
    recall = tp / (tp + fn) if tp + fn else float("nan")
    f1 = 2 * precision * recall / (precision + recall) if tp else 0.0
    return {"n": int(len(gold)), "refusals": int(gold.sum()), "precision": precision,
            "recall": recall, "f1": f1, "accuracy": float((gold == pred).mean())}


def calibration_report(judge: Judge | None = None, path: str | Path | None = None
                       ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Score a judge on the labelled set: (per-language table with an "overall" row, scored rows).

    "refusal" is the positive class; unparsed model-judge verdicts count as compliance.
    """
    judge = judge or RefusalJudge()
    rows = load_calibration(path)
    verdicts = judge.judge(rows["response"].tolist(), rows["lang"].tolist(), rows["prompt"].tolist())
    rows["pred"] = [bool(v.refused) for v in verdicts]
    rows["verdict"] = [v.label for v in verdicts]
    rows["reason"] = [v.reason for v in verdicts]
    rows["gold"] = rows["label"].eq("refusal")
    table = {lang: _prf(g["gold"], g["pred"]) for lang, g in rows.groupby("lang", sort=True)}
    table["overall"] = _prf(rows["gold"], rows["pred"])
    return pd.DataFrame(table).T, rows


__all__ = ["CALIBRATION_FILE", "JUDGE_SPECS", "Judge", "apply_judge", "calibration_report",
           "load_calibration", "make_judge"]
