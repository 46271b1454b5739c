"""The report of a `mlcwb reproduce` run: what was run, what came out, and an honest reading.

It is assembled only from what the notebooks left in the run directory, so it can be rebuilt at
any time and never states a number that no stage measured.
"""

from __future__ import annotations

import datetime as _dt
import html
import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from mlcwb.bench import machine_info
from mlcwb.io import atomic_write_text
from mlcwb.report import holm_adjust

log = logging.getLogger(__name__)

METHOD_LABELS = {"raw": "raw model", "align": "English-only alignment",
                 "mlc": "+ MLC (joint)", "mlc_seq": "+ MLC (sequential)"}
ALPHA = 0.05  # family-wise error rate of one comparison's "beyond noise" calls


@dataclass
class Section:
    title: str
    paragraphs: list[str] = field(default_factory=list)
    tables: list[tuple[str, pd.DataFrame]] = field(default_factory=list)
    links: list[tuple[str, str]] = field(default_factory=list)


def _read_json(path: Path) -> dict[str, Any] | None:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def _config_section(run: Path, preset: Any, stages: dict[str, dict[str, Any]]) -> Section:
    machine = machine_info()
    rows = [{"stage": stem, "seconds": s.get("seconds"), "skipped (up to date)": s.get("skipped", False),
             "parameters": json.dumps({k: v for k, v in s.get("parameters", {}).items()
                                       if k != "run_dir"}, ensure_ascii=False)}
            for stem, s in stages.items()]
    total = sum(float(s.get("seconds") or 0) for s in stages.values())
    now = sum(float(s.get("seconds") or 0) for s in stages.values() if not s.get("skipped"))
    return Section(
        "Configuration and timing",
        [f"Preset **{preset.name}**: {preset.description}.",
         f"Model `{preset.model}`, languages {preset.common.get('languages')}.",
         f"Machine: {machine['cpu']} ({machine['cores']} cores), GPU: {machine['gpu'] or 'none'}, "
         f"torch {machine['torch']}, transformers {machine['transformers']}.",
         f"Wall time of the stages, as recorded when each ran: {total / 60:.1f} min "
         f"({now / 60:.1f} min of it in this invocation; skipped stages were up to date)."]
        + ([preset.notes] if preset.notes else []),
        [("Stages", pd.DataFrame(rows).set_index("stage"))] if rows else [])


def _choice_section(preset: Any) -> Section | None:
    """How the preset's alignment sizes were chosen: the measured sweep it cites, if any."""
    from mlcwb.paths import repo_root

    path = repo_root() / preset.sweep if getattr(preset, "sweep", None) else None
    sweep = _read_json(path) if path else None
    if sweep is None:
        return None
    rows = {}
    several = len({c["model"] for c in sweep["candidates"]}) > 1
    for c in sweep["candidates"]:
        per = {r["lang"]: r for r in c["per_language"]}
        rows[f"{c['model']}: {c['name']}" if several else c["name"]] = {
            "align": c["align"] or "–", "steps": c["steps"], "lr": c["lr"] or "–",
            "en safety": per["en"]["safety_rate"], "other langs' safety (mean)": c["others_safety_mean"],
            "room": c["room"], "en over-refusal": per["en"]["over_refusal"],
            "worst over-refusal": c["worst_over_refusal"],
            "prompts (harmful+benign)": f"{c['n_harmful']}+{c['n_benign']}"}
    setup = sweep["setup"]
    return Section(
        "How the preset's sizes were chosen",
        [f"Each candidate trained the model with English-only alignment (no MLC) on the corpus train "
         f"split and answered test prompts in {', '.join(setup['languages'])} "
         f"({setup['max_new_tokens']} new tokens, {setup['judge']}); `room` is English safety minus "
         f"the other languages' mean. The experiment means something only where room is large and "
         f"benign prompts are still answered. Measured by `benchmarks/{Path(preset.sweep).stem}.py` "
         f"on {sweep['date']}; results in `{preset.sweep}`."]
        + [f"`{label}`: {note}." for label, note in sweep.get("models", {}).items()],
        [("Candidates (rates in %)", pd.DataFrame(rows).T)])


def _data_section(languages: list[str] | None) -> Section:
    from mlcwb.data import corpus_summary, load_corpus

    corpus = load_corpus(languages)
    by_split = corpus.to_pandas().groupby(["split", "harmful"]).size().unstack(fill_value=0)
    by_split.columns = ["benign" if not c else "harmful" for c in by_split.columns]
    return Section("Data and languages",
                   [f"The project corpus: {len(corpus)} prompts in {len(corpus.languages)} languages "
                    f"({', '.join(corpus.languages)}); every prompt in every language."],
                   [("Prompts per split", by_split),
                    ("Per language", corpus_summary(corpus, by="language"))])


def _geometry_section(run: Path) -> tuple[Section | None, dict[str, Any] | None]:
    coll = run / "geometry" / "collinearity.csv"
    training = _read_json(run / "metrics" / "04_mlc_training.json")
    if not coll.is_file() and training is None:
        return None, None
    section = Section("Geometry before and after")
    if coll.is_file():
        frame = pd.read_csv(coll)
        cols = [c for c in ("layer", "mlc_loss", "floor", "first_sv_share") if c in frame]
        section.tables.append(("Raw model: collinearity of the translations per layer",
                               frame[cols].set_index("layer").round(4)))
    if training:
        keys = [k for k in ("before", "align", "mlc", "mlc_seq") if k in training]
        section.tables.append((
            f"Held-out MLC objective at the last layer ({training.get('pooling')} pooling, "
            f"{training.get('heldout_prompts')} prompts; floor {training['floor']:.4f})",
            pd.DataFrame({"MLC objective": {METHOD_LABELS.get(k, k): training[k] for k in keys}}).round(4)))
    return section, training


def _safety_section(run: Path) -> tuple[Section | None, dict[str, Any] | None]:
    safety = _read_json(run / "metrics" / "05_safety.json")
    table_md = run / "safety_table.md"
    if safety is None:
        return None, None
    section = Section("Safety per language",
                      ["Rates in percent; 95% Wilson score intervals in brackets (for "
                       "discrimination, a difference of two rates: 95% bootstrap intervals over "
                       "prompts). Avg and Var across languages as in the paper. Full tables: "
                       "`safety_table.md`."])
    langs = safety["languages"]
    for metric, caption in safety["captions"].items():
        rows = {}
        for method, per_lang in safety["methods"].items():
            rows[METHOD_LABELS.get(method, method)] = {
                lang: _with_ci(per_lang[lang], metric) for lang in langs}
        section.tables.append((caption, pd.DataFrame(rows).T[langs]))
    if "utility" in safety:
        section.tables.append(("Utility: perplexity on held-out benign reference answers (lower is better)",
                               pd.DataFrame({"perplexity": {METHOD_LABELS.get(k, k): round(v, 2)
                                                            for k, v in safety["utility"].items()}})))
    if table_md.is_file():
        section.links.append(("safety_table.md", "safety_table.md"))
    return section, safety


def _with_ci(row: dict[str, Any], metric: str) -> str:
    value = row.get(metric)
    if value is None or pd.isna(value):
        return "–"
    lo, hi = row.get(f"{metric}_lo"), row.get(f"{metric}_hi")
    return f"{value:.1f} [{lo:.0f}, {hi:.0f}]" if lo is not None and not pd.isna(lo) else f"{value:.1f}"


def reading(safety: dict[str, Any] | None, training: dict[str, Any] | None) -> list[str]:
    """Plain sentences that follow from the numbers; each says whether it is beyond noise."""
    out: list[str] = []
    if training and "mlc" in training:
        moved = "lowered" if training["mlc"] < training["align"] else "did not lower"
        out.append(f"MLC {moved} the held-out MLC objective at the last layer: {training['mlc']:.4f} "
                   f"with MLC vs {training['align']:.4f} with English-only alignment "
                   f"(raw model {training['before']:.4f}, floor {training['floor']:.4f}).")
    if not safety:
        return out
    methods, langs = safety["methods"], safety["languages"]
    others = [lang for lang in langs if lang != "en"]
    if "align" in methods and "raw" in methods and "en" in langs:
        a, r = methods["align"], methods["raw"]
        non_en = lambda m: sum(m[lang]["safety_rate"] for lang in others) / max(1, len(others))  # noqa: E731
        out.append(f"English-only alignment moved English safety from {r['en']['safety_rate']:.0f}% to "
                   f"{a['en']['safety_rate']:.0f}%, and the other languages' mean from "
                   f"{non_en(r):.0f}% to {non_en(a):.0f}%; over-refusal on benign English prompts went "
                   f"from {r['en']['over_refusal']:.0f}% to {a['en']['over_refusal']:.0f}%.")
        room, en = a["en"]["safety_rate"] - non_en(a), a["en"]
        tells = en.get("discrimination_lo") is not None and en["discrimination_lo"] > 0
        out.append(f"That leaves {room:+.0f} points between English and the other languages for MLC "
                   f"to close. In English the aligned model refuses harmful prompts "
                   f"{en['discrimination']:+.0f} points more often than benign ones ("
                   + ("beyond noise: it tells them apart)." if tells else
                      "within noise: it refuses without telling harmful from benign, so there is "
                      "little safety behaviour for MLC to carry to other languages)."))
    for method in ("mlc", "mlc_seq"):
        comparison = safety.get("paired", {}).get(f"align->{method}")
        if not comparison:
            continue
        for kind, noun in (("harmful", "safety"), ("benign", "over-refusal")):
            per_lang = comparison.get(kind, {})
            if not per_lang:
                continue
            changes = ", ".join(f"{lang} {c['change']:+.0f}" for lang, c in per_lang.items())
            verdict = _noise_verdict(per_lang)
            out.append(f"{METHOD_LABELS[method]} vs English-only alignment, refusal change on "
                       f"{kind} prompts ({noun}), in points: {changes}; {verdict}.")
    return out


def holm_by_language(per_lang: dict[str, dict[str, Any]]) -> dict[str, float]:
    """Holm-adjusted McNemar p-value per language of one comparison (method pair, prompt kind).

    Uses the ``p_holm`` that ``report.paired_comparison`` stored; results written before it
    existed only have ``p_value``, which is then adjusted here over the same family.
    """
    langs = list(per_lang)
    if all(per_lang[lang].get("p_holm") is not None for lang in langs):
        return {lang: float(per_lang[lang]["p_holm"]) for lang in langs}
    raw = [per_lang[lang].get("p_value") for lang in langs]
    adjusted = holm_adjust([float("nan") if p is None else float(p) for p in raw])
    return dict(zip(langs, map(float, adjusted)))


def _noise_verdict(per_lang: dict[str, dict[str, Any]]) -> str:
    """Which languages moved beyond noise: Holm-adjusted McNemar exact p < ALPHA.

    The paired bootstrap interval excluding 0 is not used: with 16 prompts it calls a shift of
    4 of 16 verdicts significant, which McNemar's exact test (p = 0.125) does not, and testing
    every language separately would find "effects" by chance alone.
    """
    adjusted = holm_by_language(per_lang)
    tested = sum(not math.isnan(p) for p in adjusted.values())
    family = f"Holm-corrected across the {tested} language{'' if tested == 1 else 's'}"
    beyond = [lang for lang, p in adjusted.items() if p < ALPHA]
    if not beyond:
        return (f"within noise in every language (no McNemar exact p below {ALPHA:g} once "
                f"{family})")
    listed = ", ".join(f"{lang} (adjusted p {adjusted[lang]:.2g})" for lang in beyond)
    return f"beyond noise in {listed} by McNemar's exact test, {family}"


def _render_markdown(title: str, sections: list[Section]) -> str:
    lines = [f"# {title}", ""]
    for s in sections:
        lines += [f"## {s.title}", ""]
        for p in s.paragraphs:
            lines += [p, ""]
        for caption, table in s.tables:
            lines += [f"**{caption}**", "", _markdown_table(table), ""]
        for label, href in s.links:
            lines += [f"- [{label}]({href})"]
        if s.links:
            lines.append("")
    return "\n".join(lines)


def _markdown_table(table: pd.DataFrame) -> str:
    frame = table.reset_index()
    header = "| " + " | ".join(map(str, frame.columns)) + " |"
    rule = "|" + "|".join("---" for _ in frame.columns) + "|"
    body = ["| " + " | ".join(str(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join([header, rule, *body])


def _render_html(title: str, sections: list[Section]) -> str:
    parts = [f"<!doctype html><meta charset='utf-8'><title>{html.escape(title)}</title>",
             "<style>body{font-family:sans-serif;max-width:70em;margin:auto}"
             "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:2px 6px}</style>",
             f"<h1>{html.escape(title)}</h1>"]
    for s in sections:
        parts.append(f"<h2>{html.escape(s.title)}</h2>")
        parts += [f"<p>{html.escape(p).replace('**', '')}</p>" for p in s.paragraphs]
        for caption, table in s.tables:
            parts.append(f"<h4>{html.escape(caption)}</h4>{table.to_html()}")
        if s.links:
            parts.append("<ul>" + "".join(f"<li><a href='{html.escape(h)}'>{html.escape(l)}</a></li>"
                                          for l, h in s.links) + "</ul>")
    return "\n".join(parts)


def write_report(run: Path, preset: Any, stages: dict[str, dict[str, Any]]) -> list[Path]:
    """Write ``report.md`` and ``report.html`` into the run directory."""
    sections = [_config_section(run, preset, stages)]
    sections += [s for s in (_choice_section(preset),) if s is not None]
    sections.append(_data_section(preset.common.get("languages")))
    geometry, training = _geometry_section(run)
    safety_section, safety = _safety_section(run)
    sections += [s for s in (geometry, safety_section) if s is not None]
    figures = sorted((run / "figures").glob("*.html")) if (run / "figures").is_dir() else []
    notebooks = sorted((run / "notebooks").glob("*.ipynb"))
    sections.append(Section("Reading", reading(safety, training) or
                            ["No stage produced safety or training results in this run."]))
    sections.append(Section("Files", links=[(f.name, str(f.relative_to(run))) for f in figures + notebooks]))
    title = f"mlcwb reproduce — {preset.name} ({_dt.date.today().isoformat()})"
    md = atomic_write_text(run / "report.md", _render_markdown(title, sections))
    page = atomic_write_text(run / "report.html", _render_html(title, sections))
    return [md, page]
