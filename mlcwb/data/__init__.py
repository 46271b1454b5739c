"""Prompt sets and their loaders, one module per job.

The data model (``promptset``) is what every later stage consumes; the project's corpus (``corpus``)
and the outside datasets (``external``) are only ways to build one. Keeping them apart lets the
corpus format or a third-party loader change without touching ``PromptSet``, and keeps each file
readable. Import from ``mlcwb.data``: the names below are the public API.
"""

from mlcwb.data.corpus import (CORPUS_CATEGORIES, CORPUS_SOURCE, corpus_dir, corpus_summary,
                               corpus_translation_files, load_corpus, load_corpus_answers,
                               load_corpus_parts, save_corpus)
from mlcwb.data.external import (MULTIJAIL_COLUMNS, MULTIJAIL_HUB_ID, load_multijail, load_pku_preference,
                                 load_pku_sft, load_table)
from mlcwb.data.promptset import SPLITS, Prompt, PromptSet

__all__ = [
    # data model
    "SPLITS", "Prompt", "PromptSet",
    # the project's corpus
    "CORPUS_CATEGORIES", "CORPUS_SOURCE", "corpus_dir", "load_corpus", "load_corpus_answers", "load_corpus_parts",
    "save_corpus",
    "corpus_translation_files", "corpus_summary",
    # outside datasets
    "MULTIJAIL_HUB_ID", "MULTIJAIL_COLUMNS", "load_multijail", "load_pku_sft", "load_pku_preference",
    "load_table",
]
