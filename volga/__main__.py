"""``python -m volga``: the same as the ``volga`` command."""

import sys

from volga.cli import main

sys.exit(main())
