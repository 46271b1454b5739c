"""One exception hierarchy for mlcwb.

Every error a user can cause (bad input, missing files, an unreachable model package) is an
``MLCWBError`` whose message says what is wrong and how to fix it, so notebooks and the CLI can
catch one type and show the message instead of a stack trace.
"""

from __future__ import annotations


class MLCWBError(Exception):
    """Base class of every error mlcwb raises on purpose."""


class ConfigError(MLCWBError, ValueError):
    """An argument or configuration value is invalid (unknown key, impossible size, ...)."""


class ModelError(MLCWBError):
    """A model could not be found, fetched, verified or loaded."""


class UnknownModelError(ModelError, KeyError):
    """A model name that is neither a known alias, a local directory nor a hub id."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class ModelFetchError(ModelError):
    """The package or file that carries a model's weights could not be obtained."""


class ChecksumError(ModelError):
    """A fetched model file does not have the size or sha256 it must have."""


class DataError(MLCWBError, ValueError):
    """A prompt set or dataset file is malformed (missing field, duplicate id, ...)."""


class LanguageError(DataError):
    """An unknown language code, or a language missing from a prompt set."""


class TranslationError(MLCWBError):
    """A translation backend failed or was misconfigured."""


class CacheError(MLCWBError):
    """An on-disk cache is corrupt or does not match what it claims to hold."""


class ExtractionError(MLCWBError, ValueError):
    """Hidden states cannot be extracted as asked (layer out of range, empty text, ...)."""


class TrainingError(MLCWBError):
    """Training cannot start or continue (non-finite loss, bad checkpoint, ...)."""


class EvaluationError(MLCWBError):
    """Generation or judging failed (judge unreachable, malformed verdict, ...)."""


class RunLockedError(MLCWBError):
    """A run or output directory is in use by another process (its ``mlcwb.lock`` says which)."""
