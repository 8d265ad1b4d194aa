"""``python -m csla_core``: see ``csla_core.cli``."""

import sys

from .cli import main

sys.exit(main())
