"""`python -m reporter.cli`: the `gate-report` command."""

import sys

from reporter.cli import main

sys.exit(main())
