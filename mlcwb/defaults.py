"""Defaults that the library and the ``mlcwb`` command line share.

They live here, in a module that imports nothing, because the command line builds its help from
them: reading ``DEFAULT_MODEL`` from ``mlcwb.models`` would import torch just to print ``--help``.
"""

DEFAULT_MODEL = "smollm2-135m-instruct"

__all__ = ["DEFAULT_MODEL"]
