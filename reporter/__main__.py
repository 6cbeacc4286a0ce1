"""`python -m reporter`: the same as the `gate-report` command."""

import sys

from reporter.cli import main

sys.exit(main())
