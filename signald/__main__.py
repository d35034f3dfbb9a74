"""``python -m signald serve``."""

import sys

from signald.cli import main

sys.exit(main())
