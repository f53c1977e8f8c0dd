"""`python -m lumina_rt.cli ...` (same as `python -m lumina_rt` and `lumina-rt`)."""

import sys

from lumina_rt.cli import main

sys.exit(main())
