"""``python -m imgclust …`` and ``torchrun --nproc_per_node N -m imgclust cluster …`` run the command line."""

import sys

from .cli import main

sys.exit(main())
