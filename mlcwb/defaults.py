"""Defaults and choices that the library and the ``mlcwb`` command line share.

They live here, in a module that imports nothing, because the command line builds its help from
them: reading ``DEFAULT_MODEL`` from ``mlcwb.models`` or ``POOLINGS`` from ``mlcwb.backbone`` would
import torch just to print ``--help``. Low in the import layers (docs/design.md), any module can
take them without depending on the one that implements them.
"""

DEFAULT_MODEL = "smollm2-135m-instruct"

POOLINGS = ("last", "content_last", "content_mean", "mean")
"""How ``mlcwb.backbone.pool_hidden`` turns a sequence of states into one vector. ``last``: last
non-pad token; with a chat template that is the last token of the generation prompt
(``<|im_start|>assistant\\n``), the position the paper pools and the one the first answer token
is predicted from. ``content_last``: last token of the user's text. ``content_mean``: mean over
the user's text. ``mean``: mean over every non-pad token (template included)."""

ARMS = ("align", "mlc", "mlc_seq", "mlc_only")
"""The arms of the experiment (``mlcwb.experiment``), in the order tables show them; evaluation
(``mlcwb.compare``) reads trained arms by these names without importing the trainer."""

__all__ = ["ARMS", "DEFAULT_MODEL", "POOLINGS"]
