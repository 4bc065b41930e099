"""`python -m sadcl`: the command line (same as the `sadcl` script)."""

import sys

from sadcl.cli import main

sys.exit(main())
