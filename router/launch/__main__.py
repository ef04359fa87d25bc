"""`python -m router.launch ARGS...`: the `modelplex` command without its console script."""

import sys

from router.launch._cli import main

sys.exit(main())
