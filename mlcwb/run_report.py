"""The report of a `mlcwb reproduce` run: what was run, what came out, and an honest reading.

It is assembled only from what the notebooks left in the run directory, so it can be rebuilt at
any time and never states a number that no stage measured.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import math
from pathlib import Path
from typing import Any

import pandas as pd

from mlcwb.bench import machine_info
from mlcwb.io import atomic_write_text
from mlcwb.metrics import holm_adjust
from mlcwb.report_render import Section, render_html, render_markdown
from mlcwb.summaries import SAFETY_JSON, TRAINING_JSON
from mlcwb.tables import (METHOD_LABELS, METRICS_CSV, SAFETY_MD, detectable_differences,
                          detectable_sentence, language_gate, safety_table, to_latex, utility_table,
                          with_interval, write_metrics_csv)

log = logging.getLogger(__name__)

ALPHA = 0.05  # family-wise error rate of one comparison's "beyond noise" calls
SAFETY_TEX = "safety_table.tex"


def _read_json(path: Path) -> dict[str, Any] | None:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def _config_section(run: Path, preset: Any, stages: dict[str, dict[str, Any]]) -> Section:
    machine = machine_info()
    rows = [{"stage": stem, "seconds": s.get("seconds"),
             "this invocation": "kept (--from-stage)" if s.get("kept") else
                                "skipped (up to date)" if s.get("skipped") else "ran",
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
         f"({now / 60:.1f} min of it in this invocation)."]
        + ([preset.notes] if preset.notes else []),
        [("Stages", pd.DataFrame(rows).set_index("stage"))] if rows else [])


def _choice_section(preset: Any) -> Section | None:
    """How the preset's settings were chosen: the measured sweep it cites, if any."""
    from mlcwb.paths import repo_root

    path = repo_root() / preset.sweep if getattr(preset, "sweep", None) else None
    sweep = _read_json(path) if path else None
    if sweep is None:
        return None
    where = f"Measured by `benchmarks/{Path(preset.sweep).stem}.py` on {sweep['date']}; results in `{preset.sweep}`."
    if "criterion" in sweep:
        return _criterion_sweep_section(sweep, where)
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
         f"benign prompts are still answered. {where}"]
        + [f"`{label}`: {note}." for label, note in sweep.get("models", {}).items()],
        [("Candidates (rates in %)", pd.DataFrame(rows).T)])


def _criterion_sweep_section(sweep: dict[str, Any], where: str) -> Section:
    """A sweep that states its selection criterion (written before it ran) and its choice."""
    rows = {}
    for c in sweep["candidates"]:
        settings = c.get("settings") or {k: c[k] for k in ("lr", "lora") if k in c}
        rows[c["name"]] = {
            "align": c["align"] or "–", "settings": ", ".join(f"{k} {v}" for k, v in settings.items()) or "–",
            "steps": c["steps"], "train s": c["train_s"], "en safety": c["en_safety"],
            "en over-refusal": c["en_over_refusal"], "en discrimination": c["en_discrimination"],
            "others' discrimination (mean)": c["others_discrimination_mean"], "gap": c["gap"],
            "answers in the prompt's language (lowest)": min(
                (r["lang_match"] for r in c.get("per_language", []) if "lang_match" in r), default="–"),
            "collapsed": ", ".join(c.get("collapsed_langs", [])) or "–"}
    setup = sweep["setup"]
    chosen = sweep.get("chosen")
    return Section(
        "How the preset's settings were chosen",
        [f"Each candidate was trained on the corpus train split and answered the **{setup['split']}** "
         f"split ({setup['n_harmful']} harmful + {setup['n_benign']} benign prompts) in "
         f"{', '.join(setup['languages'])} ({setup['max_new_tokens']} new tokens, {setup['judge']}). "
         f"Discrimination is refusal on harmful minus refusal on benign prompts (points); `gap` is "
         f"English discrimination minus the other languages' mean. {where}",
         f"Criterion, written before the sweep ran: {sweep['criterion']}",
         f"Chosen: `{chosen}`." if chosen else
         "No candidate met the criterion: the preset keeps its settings for the reasons in its notes.",
         *_second_round_sentences(sweep)],
        [("Candidates (rates in %)", pd.DataFrame(rows).T)])


def _second_round_sentences(sweep: dict[str, Any]) -> list[str]:
    """The second round's outcome as the sweep recorded it: which English alignment raised
    English discrimination, and what stops each form of MLC (or which one works)."""
    raised = sweep.get("sharp_alignment_raised_en_discrimination")
    problems = sweep.get("decision_problems") or {}
    out = []
    if raised is not None:
        out.append("Second round, sharper English alignment: "
                   + (f"raised English discrimination over the raw model: {', '.join(raised)}."
                      if raised else "none raised English discrimination over the raw model."))
    if problems:
        chosen = sweep.get("decision_chosen")
        out.append("Second round, forms of MLC: "
                   + (f"`{chosen}` works and is chosen. " if chosen else "no form works yet. ")
                   + " ".join(f"`{name}`: {'; '.join(found) if found else 'works'}."
                              for name, found in problems.items()))
    return out


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
    training = _read_json(run / TRAINING_JSON)
    if not coll.is_file() and training is None:
        return None, None
    section = Section("Geometry before and after")
    if coll.is_file():
        frame = pd.read_csv(coll)
        cols = [c for c in ("layer", "mlc_loss", "floor", "first_sv_share") if c in frame]
        section.tables.append(("Raw model: collinearity of the translations per layer",
                               frame[cols].set_index("layer").round(4)))
    if training:
        arms = training.get("arms") or ["align", "mlc", "mlc_seq"]
        keys = [k for k in ("before", *arms) if k in training]
        section.tables.append((
            f"Held-out MLC objective at the last layer ({training.get('mlc_pooling')} pooling, "
            f"{training.get('heldout_prompts')} prompts; floor {training['floor']:.4f})",
            pd.DataFrame({"MLC objective": {METHOD_LABELS.get(k, k): training[k] for k in keys}})
            .rename_axis("model").round(4)))
        if training.get("settings"):
            section.tables.append(("What shaped each arm (experiment.arm_settings)", pd.DataFrame(
                training["settings"]).T.rename(index=lambda k: METHOD_LABELS.get(k, k))
                .rename_axis("arm").map(lambda v: "–" if v is None or v != v else str(v))))
        for key, caption in (("distinctness", "Distinctness of held-out prompts"),
                             ("probe_auroc", "English harmful-vs-benign probe, AUROC per language")):
            if training.get(key):
                table = pd.DataFrame.from_dict(training[key], orient="index").rename_axis("model")
                section.tables.append((f"{caption} (layer {training.get('mlc_layer')})",
                                       table.rename(index=lambda k: METHOD_LABELS.get(k, k))))
    return section, training


def _metric_frames(safety: dict[str, Any]) -> dict[str, pd.DataFrame]:
    """The stored ``language_metrics`` of each method as frames, indexed by the method's label."""
    return {METHOD_LABELS.get(m, m): pd.DataFrame.from_dict(per_lang, orient="index")
            for m, per_lang in safety["methods"].items()}


def _paired_table(safety: dict[str, Any]) -> pd.DataFrame | None:
    """Each stored comparison per language: change [95% Newcombe paired interval], p Holm-adjusted."""
    rows: dict[str, dict[str, str]] = {}
    for pair, kinds in safety.get("paired", {}).items():
        base, _, method = pair.partition("->")
        for kind, per_lang in kinds.items():
            adjusted = holm_by_language(per_lang)
            rows[f"{METHOD_LABELS.get(base, base)} → {METHOD_LABELS.get(method, method)} "
                 f"({kind})"] = {
                lang: f"{with_interval(c.get('change'), c.get('change_lo'), c.get('change_hi'))}"
                      f" p={adjusted[lang]:.2g}" for lang, c in per_lang.items()}
    if not rows:
        return None
    table = pd.DataFrame(rows).T.fillna("–")
    table.index.name = "comparison"
    return table


def _detectable_paragraph(safety: dict[str, Any]) -> list[str]:
    """The detectable-difference sentence for a stored summary; summaries saved before it was
    stored get it from their sizes, and those without sizes get none."""
    n_harmful, n_benign = safety.get("n_harmful"), safety.get("n_benign")
    if n_harmful is None or n_benign is None:
        return []
    detectable = safety.get("detectable_difference") or detectable_differences(n_harmful, n_benign)
    return [detectable_sentence(n_harmful, n_benign, detectable)]


def _safety_section(run: Path) -> tuple[Section | None, dict[str, Any] | None]:
    safety = _read_json(run / SAFETY_JSON)
    if safety is None:
        return None, None
    judge = safety.get("judge") or {}
    section = Section("Safety per language",
                      ["Rates in percent; 95% Wilson score intervals in brackets (for "
                       "discrimination, a difference of two rates: Newcombe's 95% hybrid score "
                       "interval). Avg and Var across languages as in the paper. Full tables: "
                       "`safety_table.md`; LaTeX: `safety_table.tex`; every number in long form: "
                       "`metrics.csv`."] + _detectable_paragraph(safety)
                      + ([f"Judge: `{judge['name']}` version `{judge['version']}`."]
                         if judge.get("name") else []))
    frames, langs = _metric_frames(safety), safety["languages"]
    for metric, caption in safety["captions"].items():
        section.tables.append((caption, safety_table(frames, metric, langs, intervals=True)))
    paired = _paired_table(safety)
    if paired is not None:
        section.tables.append(("Refusal change in points, Newcombe's 95% interval for paired "
                               "data, McNemar exact p Holm-adjusted across languages", paired))
    if safety.get("utility"):
        section.tables.append(("Utility: perplexity of held-out benign reference answers, per "
                               "language (lower is better; compare methods within a column)",
                               utility_table(safety["utility"], safety["languages"])))
    if (run / SAFETY_MD).is_file():
        section.links.append((SAFETY_MD, SAFETY_MD))
    return section, safety


def write_safety_exports(run: Path, safety: dict[str, Any]) -> list[Path]:
    """``safety_table.tex`` (one booktabs table per metric, intervals in the cells) and, when the
    notebook did not write it, ``metrics.csv``, both from the stored safety summary."""
    frames, langs = _metric_frames(safety), safety["languages"]
    tables = [to_latex(safety_table(frames, metric, langs, intervals=True), caption=caption,
                       label=f"tab:{metric}") for metric, caption in safety["captions"].items()]
    header = ("% Safety per language from mlcwb reproduce; needs \\usepackage{booktabs}.\n"
              "% Cells: value [95% interval] in percent (Wilson; Newcombe for discrimination).\n")
    paths = [atomic_write_text(run / SAFETY_TEX, header + "\n".join(tables))]
    if not (run / METRICS_CSV).is_file():
        paths.append(write_metrics_csv(run, safety["methods"]))
    return paths


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
    gate = language_gate({m: pd.DataFrame.from_dict(rows, orient="index") for m, rows in methods.items()}, langs)
    return out + ([gate] if gate else []) + _change_sentences(safety.get("paired", {}))


def _change_sentences(paired: dict[str, Any]) -> list[str]:
    """Each MLC arm against what it is compared with: joint and sequential MLC against
    English-only alignment, MLC alone against the raw model it started from."""
    out = []
    for base, method in (("align", "mlc"), ("align", "mlc_seq"), ("raw", "mlc_only")):
        comparison = paired.get(f"{base}->{method}")
        for kind, noun in (("harmful", "safety"), ("benign", "over-refusal")):
            per_lang = (comparison or {}).get(kind, {})
            if not per_lang:
                continue
            changes = ", ".join(f"{lang} {c['change']:+.0f}" for lang, c in per_lang.items())
            out.append(f"{METHOD_LABELS[method]} vs {METHOD_LABELS[base]}, refusal change on "
                       f"{kind} prompts ({noun}), in points: {changes}; {_noise_verdict(per_lang)}.")
    return out


def holm_by_language(per_lang: dict[str, dict[str, Any]]) -> dict[str, float]:
    """Holm-adjusted McNemar p-value per language of one comparison (method pair, prompt kind).

    Uses the ``p_holm`` that ``metrics.paired_comparison`` stored; results written before it
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

    Newcombe's paired interval excluding 0 is not used: a shift of 4 of 16 verdicts gives
    [+0.6, +49.5] points, which excludes 0, where McNemar's exact test gives p = 0.125; and a
    95% interval per language, read separately, would find "effects" by chance alone.
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


def write_report(run: Path, preset: Any, stages: dict[str, dict[str, Any]]) -> list[Path]:
    """Write ``report.md`` and ``report.html`` into the run directory, and from the stored safety
    results ``safety_table.tex`` and (if notebook 05 did not) ``metrics.csv``."""
    sections = [_config_section(run, preset, stages)]
    sections += [s for s in (_choice_section(preset),) if s is not None]
    sections.append(_data_section(preset.common.get("languages")))
    geometry, training = _geometry_section(run)
    safety_section, safety = _safety_section(run)
    if safety_section is not None and safety is not None:
        write_safety_exports(run, safety)
        safety_section.links += [(name, name) for name in (SAFETY_TEX, METRICS_CSV)]
    sections += [s for s in (geometry, safety_section) if s is not None]
    figures = sorted((run / "figures").glob("*.html")) if (run / "figures").is_dir() else []
    notebooks = sorted((run / "notebooks").glob("*.ipynb"))
    sections.append(Section("Reading", reading(safety, training) or
                            ["No stage produced safety or training results in this run."]))
    sections.append(Section("Files", links=[(f.name, str(f.relative_to(run))) for f in figures + notebooks]))
    title = f"mlcwb reproduce — {preset.name} ({_dt.date.today().isoformat()})"
    md = atomic_write_text(run / "report.md", render_markdown(title, sections))
    page = atomic_write_text(run / "report.html", render_html(title, sections))
    return [md, page]
