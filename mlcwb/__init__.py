"""mlcwb: the Multi-Lingual Consistency workbench (see README.md).

The package's import is kept free of torch and friends on purpose: ``mlcwb --version`` and
``mlcwb --help`` import it, and so does the build backend when it reads ``__version__``.
"""

__version__ = "0.1.0"  # the one place the version is written; pyproject.toml reads it from here

__all__ = ["__version__"]
