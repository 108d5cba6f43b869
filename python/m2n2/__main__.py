"""`python -m m2n2 ...` is the `m2n2` command."""
import sys

from .cli import main

sys.exit(main())
