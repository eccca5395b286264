"""``python -m ser_plugins.cli``: the ``ser`` command."""

import sys

from ser_plugins.cli.commands import main

sys.exit(main())
