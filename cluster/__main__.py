"""``python -m cluster`` is the ``r1ray`` command."""

import sys

from cluster.cli import main

sys.exit(main())
