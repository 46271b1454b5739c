"""``python -m mlcwb ...`` is the ``mlcwb`` command; ``accelerate launch -m mlcwb train CONFIG``
starts one training process per device through it."""

import sys

from mlcwb.cli import main

sys.exit(main())
