"""``python -m raytrain``: the same as the ``raytrain`` command."""

import sys

from raytrain.cli import main

sys.exit(main())
