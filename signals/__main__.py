"""``python -m signals ...``: the same command as the ``signals`` script."""

import sys

from signals.cli import main

sys.exit(main())
