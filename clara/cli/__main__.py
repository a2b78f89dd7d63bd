"""``python -m clara.cli``: the same as the ``clara`` console script."""

import sys

from clara.cli.main import main

sys.exit(main())
