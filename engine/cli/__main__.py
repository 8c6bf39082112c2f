"""`python -m engine.cli ...` runs the `topoprune` command."""

import sys

from engine.cli import main

sys.exit(main())
