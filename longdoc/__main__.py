"""`python -m longdoc` is the `longdoc` command (useful under `torchrun -m longdoc`)."""

import sys

from longdoc.flows.cli import main

if __name__ == "__main__":
    sys.exit(main())
