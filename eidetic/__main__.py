"""``python -m eidetic``: the same as the ``eidetic`` command (see :mod:`eidetic.cli`)."""

import sys

from .cli import main

sys.exit(main())
