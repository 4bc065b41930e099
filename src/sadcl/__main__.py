import sys

from sadcl.cli import main

sys.exit(main())
