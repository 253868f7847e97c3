"""`python -m mt` is the `mt` command."""

import sys

from mt.cli import main

sys.exit(main())
