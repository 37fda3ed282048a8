"""`python -m lorarlhf ...`, the same as the `lorarlhf` command; what `accelerate launch -m lorarlhf` runs."""

import sys

from lorarlhf.cli import main

sys.exit(main())
