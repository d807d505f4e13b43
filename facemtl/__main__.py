"""`python -m facemtl`: the `facemtl` command."""

import sys

from facemtl.runtime.cli import main

sys.exit(main())
