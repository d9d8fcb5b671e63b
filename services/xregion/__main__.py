"""`python -m services.xregion`: the `xregion` command (how `xregion up` starts its stacks)."""

import sys

from services.xregion.cli import main

sys.exit(main())
