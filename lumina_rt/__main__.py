"""`python -m lumina_rt ...`: the `lumina-rt` command line."""

import sys

from lumina_rt.cli import main

sys.exit(main())
