"""``python -m tficon``: the command line (also what ``accelerate launch -m tficon batch ...`` starts)."""

import sys

from tficon.cli import main

if __name__ == "__main__":
    sys.exit(main())
