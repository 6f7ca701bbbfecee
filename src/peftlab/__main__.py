"""`python -m peftlab ...` is the `peftlab` command (also under `torchrun ... -m peftlab train ...`)."""

import sys

from peftlab.cli import main

if __name__ == "__main__":
    sys.exit(main())
