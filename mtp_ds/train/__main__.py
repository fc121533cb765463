"""`python -m mtp_ds.train RECIPE [key=value ...]` (what torchrun and the Slurm scripts launch)."""

import sys

from mtp_ds.train.loop import main

sys.exit(main())
