"""``python -m ser_plugins.launch JOB.json [RESULT.json]``: run one job (what launchers start)."""

import sys

from ser_plugins.launch.jobs import main

sys.exit(main())
