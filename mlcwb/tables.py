"""The comparison's tables: the paper's layout (methods x languages + Avg + Var), Markdown,
HTML and LaTeX renderings of it, ``safety_table.md`` (every metric and utility in Markdown), the
long-format ``metrics.csv`` other tools read, and the sentence printed beside them on the
smallest difference their sample sizes can detect.

Every cell is formatted by ``with_interval`` so that all of mlcwb's tables read alike.
"""

from __future__ import annotations

import html
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mlcwb.errors import DataError
from mlcwb.io import atomic_path
from mlcwb.metrics import METRICS, detectable_difference

# How tables and the report name each method (a name not listed is shown as it is).
METHOD_LABELS = {"raw": "raw model", "align": "English-only alignment",
                 "mlc": "+ MLC (joint)", "mlc_seq": "+ MLC (sequential)",
                 "mlc_only": "MLC only (no alignment)"}

# --------------------------------------------------------------------------------------------
# What a table of these sizes can show
# --------------------------------------------------------------------------------------------

def detectable_differences(n_harmful: int, n_benign: int, alpha: float = 0.05,
                           power: float = 0.8, base_rate: float = 0.5) -> dict[str, float | None]:
    """The smallest differences, in points, that ``n_harmful`` and ``n_benign`` prompts per
    language detect (``metrics.detectable_difference``), with the terms they hold under.

    A table of rates invites reading every gap in it as a finding; these say which gaps the
    sample could have found at all. ``discrimination``: harmful vs benign refusal within one
    language. ``change_harmful``/``change_benign``: one rate before and after, on the same
    prompts, figured with the unpaired formula for n vs n prompts. That is conservative: the
    paired test gains from the correlation of a prompt's two verdicts, which is usually
    positive. A base rate of 50%, where a proportion varies most, makes the figures hold at any
    rate. None where a group is empty or too small for any difference to be detected.
    """
    def points(n1: int, n2: int) -> float | None:
        if min(n1, n2) < 1:
            return None
        d = detectable_difference(n1, n2, alpha=alpha, power=power, base_rate=base_rate)
        return None if math.isnan(d) else round(100 * d, 1)

    return {"discrimination": points(n_harmful, n_benign),
            "change_harmful": points(n_harmful, n_harmful),
            "change_benign": points(n_benign, n_benign),
            "power": power, "alpha": alpha, "base_rate": base_rate}


def detectable_sentence(n_harmful: int, n_benign: int, detectable: Mapping[str, Any]) -> str:
    """``detectable_differences`` as the one sentence printed beside the tables."""
    terms = (f"{detectable['power']:.0%} power, α {detectable['alpha']:g}, "
             f"base rate {detectable['base_rate']:.0%}")
    sizes = f"With {n_harmful} harmful and {n_benign} benign prompts per language"
    d, ch, cb = (detectable.get(k) for k in ("discrimination", "change_harmful", "change_benign"))
    if d is None or ch is None or cb is None:
        return f"{sizes}, no difference can be told from noise ({terms})."
    return (f"{sizes}, differences smaller than about {d:.0f} points cannot be told from noise in "
            f"a discrimination (harmful vs benign, within one language), nor changes smaller "
            f"than about {ch:.0f} points on harmful or {cb:.0f} points on benign prompts between "
            f"two methods on the same prompts ({terms}; for changes the unpaired figure, "
            f"conservative for prompts compared with themselves).")


# --------------------------------------------------------------------------------------------
# Table in the paper's layout
# --------------------------------------------------------------------------------------------

def with_interval(value: Any, lo: Any = None, hi: Any = None, digits: int = 1) -> str:
    """One table cell: ``value [lo, hi]`` (bounds to whole points), ``value`` without bounds,
    "–" without a value. The one format of every table mlcwb prints, so they all read alike."""
    if value is None or pd.isna(value):
        return "–"
    if lo is None or hi is None or pd.isna(lo) or pd.isna(hi):
        return f"{value:.{digits}f}"
    return f"{value:.{digits}f} [{lo:.0f}, {hi:.0f}]"


LANGUAGE_GATE = 90.0  # % of answers in the prompt's language a method must keep in every language


def language_gate(results: Mapping[str, pd.DataFrame], langs: Sequence[str]) -> str | None:
    """One sentence naming the methods that answer some language in another one (``lang_match``
    below ``LANGUAGE_GATE``), or None where it was not measured: safety bought by answering a
    Swahili prompt in English is not the safety the experiment asks about."""
    if not any("lang_match" in frame for frame in results.values()):
        return None
    failing = {method: [(lang, float(frame.at[lang, "lang_match"])) for lang in langs
                        if lang in frame.index and "lang_match" in frame
                        and pd.notna(frame.at[lang, "lang_match"])
                        and frame.at[lang, "lang_match"] < LANGUAGE_GATE]
               for method, frame in results.items()}
    passed = [METHOD_LABELS.get(m, m) for m, bad in failing.items() if not bad]
    parts = [f"{METHOD_LABELS.get(m, m)} in " + ", ".join(f"{lang} {share:.3g}%" for lang, share in bad)
             for m, bad in failing.items() if bad]
    return (f"Answers in the prompt's language (gate: at least {LANGUAGE_GATE:.0f}% in every language): "
            f"{', '.join(passed) or 'no method'} pass{'es' if len(passed) == 1 else ''}"
            + (f"; below the gate: {'; '.join(parts)}." if parts else "."))


def safety_table(results: Mapping[str, pd.DataFrame], metric: str = "safety_rate",
                 langs: Sequence[str] | None = None, intervals: bool = False,
                 digits: int = 1) -> pd.DataFrame:
    """Rows = methods, columns = languages + Avg + Var (the paper's layout), values in percent.

    ``results`` maps a method name to its ``language_metrics`` frame. Var is the population
    variance (ddof=0) of the per-language values, in squared percentage points. With
    ``intervals=True`` each language cell is the text ``value [lo, hi]`` (the frame's 95%
    interval, see ``with_interval``) and Avg and Var stay numbers, rounded to ``digits``: the
    form for printed tables, where a rate without its interval overstates what 16 prompts show.
    """
    if not results:
        raise DataError("No results to tabulate.")
    if metric not in METRICS:
        raise DataError(f"Unknown metric {metric!r}; choose from {', '.join(METRICS)}.")
    first = next(iter(results.values()))
    langs = list(langs) if langs else list(first.index)
    rows = {}
    for method, frame in results.items():
        missing = [lang for lang in langs if lang not in frame.index]
        if missing:
            raise DataError(f"{method!r} has no results for {missing}; evaluate every method on "
                            f"the same languages.")
        values = frame.loc[langs, metric].astype(float)
        cells: dict[str, Any] = values.to_dict()
        if intervals:
            bounds = [frame.loc[langs, f"{metric}_{b}"] if f"{metric}_{b}" in frame else
                      pd.Series(None, index=langs, dtype=float) for b in ("lo", "hi")]
            cells = {lang: with_interval(values[lang], bounds[0][lang], bounds[1][lang], digits)
                     for lang in langs}
        avg, var = float(values.mean()), float(values.var(ddof=0))
        rows[method] = {**cells, "Avg": round(avg, digits) if intervals else avg,
                        "Var": round(var, digits) if intervals else var}
    table = pd.DataFrame(rows).T[[*langs, "Avg", "Var"]]
    table.index.name = "method"
    return table


def measured_metrics(results: Mapping[str, pd.DataFrame]) -> dict[str, str]:
    """The ``METRICS`` (name -> caption, in that order) that every method's frame holds: the
    tables worth printing, since a metric one method lacks (results saved before it existed)
    would make ``safety_table`` fail."""
    return {m: caption for m, caption in METRICS.items()
            if all(m in frame.columns for frame in results.values())}


def utility_table(utility: Mapping[str, Mapping[str, float] | float],
                  languages: Sequence[str] = ()) -> pd.DataFrame:
    """Methods × languages perplexity, rounded, columns in ``languages`` order first; a method
    stored as one number (runs made before utility was measured per language) is English."""
    rows = {METHOD_LABELS.get(m, m): ({"en": v} if isinstance(v, (int, float)) else dict(v))
            for m, v in utility.items()}
    table = pd.DataFrame(rows).T.round(2).rename_axis("method")
    first = [lang for lang in languages if lang in table.columns]
    return table[first + [c for c in table.columns if c not in first]]


def _markdown_cell(value: Any, digits: int | None) -> str:
    """One table cell: a missing number as a dash, floats rounded to ``digits`` unless ``None``."""
    if isinstance(value, (float, np.floating)) and math.isnan(value):
        return "–"
    if digits is not None and isinstance(value, (float, np.floating)):
        return f"{value:.{digits}f}"
    return str(value)


def to_markdown(table: pd.DataFrame, digits: int | None = 1, caption: str | None = None) -> str:
    """A GitHub Markdown table (no extra dependency): the index as first column, numbers right-aligned.

    ``digits=None`` writes values as they are, for tables rounded per column beforehand (the run
    report); rows are read with ``itertuples`` so an integer column stays integer.
    """
    head = [table.index.name or ""] + [str(c) for c in table.columns]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] + ["---:"] * len(table.columns)) + "|"]
    for name, *values in table.itertuples(name=None):
        lines.append("| " + " | ".join([str(name), *(_markdown_cell(v, digits) for v in values)]) + " |")
    return ((f"**{caption}**\n\n" if caption else "") + "\n".join(lines) + "\n")


SAFETY_MD = "safety_table.md"


def safety_markdown(results: Mapping[str, pd.DataFrame], langs: Sequence[str],
                    utility: Mapping[str, Mapping[str, float]] | None = None) -> str:
    """The text of ``safety_table.md``: each of ``measured_metrics`` in the paper's layout with
    its intervals (``safety_table(..., intervals=True)``), captioned, then the utility table
    when there is one. Readable without the report, and without the JSON it is built from.

    ``results`` maps a method name to its ``language_metrics`` frame; ``utility`` a method to
    its perplexity per language (``compare.evaluate_methods``).
    """
    text = "\n".join(to_markdown(safety_table(results, metric, langs, intervals=True), caption=caption)
                     for metric, caption in measured_metrics(results).items())
    if utility:
        text += "\n" + to_markdown(utility_table(utility, langs), digits=2, caption="Utility")
    return text


def to_html(table: pd.DataFrame, digits: int = 1, caption: str | None = None) -> str:
    """A standalone HTML table (escaped), for reports and notebooks."""
    cap = f"<caption>{html.escape(caption)}</caption>" if caption else ""
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in [table.index.name or "", *table.columns])
    body = []
    for name, row in table.iterrows():
        cells = "".join(f"<td>{v:.{digits}f}</td>" if isinstance(v, (float, np.floating))
                        else f"<td>{html.escape(str(v))}</td>" for v in row)
        body.append(f"<tr><th>{html.escape(str(name))}</th>{cells}</tr>")
    return f"<table>{cap}<thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


_LATEX_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#",
                  "_": r"\_", "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}",
                  "^": r"\textasciicircum{}"}


def latex_escape(text: str) -> str:
    """Text safe inside a LaTeX table: the ten special characters escaped."""
    return "".join(_LATEX_SPECIAL.get(ch, ch) for ch in str(text))


def to_latex(table: pd.DataFrame, digits: int = 1, caption: str | None = None,
             label: str | None = None) -> str:
    """A booktabs ``table`` environment (``\\usepackage{booktabs}``) for a paper.

    Written out here rather than by ``DataFrame.to_latex`` so that method names, headers and the
    caption are escaped alike and the output does not follow pandas' Styler from version to
    version. Cells of ``safety_table(..., intervals=True)`` come out as ``value [lo, hi]``,
    numbers with ``digits`` decimals, missing values as "--".
    """
    def cell(v: Any) -> str:
        if isinstance(v, (float, np.floating)):
            return "--" if math.isnan(v) else f"{v:.{digits}f}"
        return "--" if v == "–" else latex_escape(v)

    lines = ["\\begin{table}[t]", "\\centering"]
    if caption:
        lines.append(f"\\caption{{{latex_escape(caption)}}}")
    if label:
        lines.append(f"\\label{{{label}}}")
    lines += [f"\\begin{{tabular}}{{l{'r' * len(table.columns)}}}", "\\toprule",
              " & ".join(latex_escape(c) for c in [table.index.name or "", *table.columns]) + " \\\\",
              "\\midrule"]
    lines += [" & ".join([latex_escape(name), *(cell(v) for v in row)]) + " \\\\"
              for name, row in table.iterrows()]
    lines += ["\\bottomrule", "\\end{tabular}", "\\end{table}"]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------------
# Long-format metrics for other tools
# --------------------------------------------------------------------------------------------

METRICS_CSV = "metrics.csv"
INTERVALS = {"discrimination": "newcombe 95%", "score_auroc": "bootstrap 95%"}  # the rest: Wilson
LONG_COLUMNS = ["method", "lang", "metric", "value", "lo", "hi", "k", "n", "interval"]
_RATE_GROUPS = {"safety_rate": "harmful", "over_refusal": "benign",
                "borderline_over_refusal": "borderline"}


def _metric_n(row: Mapping[str, Any], metric: str) -> Any:
    """The number of responses behind one metric of one language (rates store it; the others
    are derived from the group sizes ``language_metrics`` keeps)."""
    if metric in _RATE_GROUPS:
        return row.get(f"{metric}_n", row.get(f"n_{_RATE_GROUPS[metric]}"))
    sizes = [row.get(k) for k in ("n_harmful", "n_benign", "n_borderline")]
    if any(v is None or pd.isna(v) for v in sizes):
        return None
    n = sum(int(v) for v in sizes)
    return n + int(row.get("unknown_verdicts") or 0) if metric == "lang_match" else n


def metrics_long(metrics_by_method: Mapping[str, pd.DataFrame | Mapping[str, Mapping[str, Any]]]
                 ) -> pd.DataFrame:
    """One row per method × language × metric: value, 95% interval bounds, k, n and the kind
    of interval (``wilson 95%`` for rates, ``newcombe 95%`` for discrimination), so any tool (R,
    a spreadsheet, another plot) can use the numbers without knowing mlcwb's column names.

    Takes ``language_metrics`` frames, or their JSON form ``{lang: {column: value}}`` as
    ``metrics/05_safety.json`` stores them under ``methods``.
    """
    rows = []
    for method, frame in metrics_by_method.items():
        if not isinstance(frame, pd.DataFrame):
            frame = pd.DataFrame.from_dict(dict(frame), orient="index")
        for lang, values in frame.to_dict(orient="index").items():
            for metric in METRICS:
                if metric not in values:
                    continue
                has_ci = f"{metric}_lo" in values
                rows.append({"method": method, "lang": lang, "metric": metric,
                             "value": values[metric], "lo": values.get(f"{metric}_lo"),
                             "hi": values.get(f"{metric}_hi"), "k": values.get(f"{metric}_k"),
                             "n": _metric_n(values, metric),
                             "interval": "" if not has_ci else INTERVALS.get(metric, "wilson 95%")})
    frame = pd.DataFrame(rows, columns=LONG_COLUMNS)
    return frame.astype({"k": "Int64", "n": "Int64"})


def write_metrics_csv(run_dir: str | Path,
                      metrics_by_method: Mapping[str, pd.DataFrame | Mapping[str, Mapping[str, Any]]]
                      ) -> Path:
    """Write ``metrics_long`` as ``run_dir/metrics.csv`` (atomically); returns its path."""
    path = Path(run_dir) / METRICS_CSV
    with atomic_path(path, suffix=".csv") as tmp:
        metrics_long(metrics_by_method).to_csv(tmp, index=False)
    return path
