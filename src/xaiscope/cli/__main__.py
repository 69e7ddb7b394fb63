"""``python -m xaiscope.cli``: the same as the ``xaiscope`` command."""

from __future__ import annotations

import sys

from xaiscope.cli.main import main

sys.exit(main())
