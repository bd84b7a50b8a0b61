"""`python -m memmodel ...` (and `torchrun -m memmodel train ...`): the `memmodel` command."""

import sys

from .training.cli import main

if __name__ == "__main__":
    sys.exit(main())
