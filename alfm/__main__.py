"""``python -m alfm``: the ``alfm`` command line."""

import sys

from alfm.cli import main

sys.exit(main())
