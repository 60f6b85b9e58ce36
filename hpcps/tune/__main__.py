import sys

from hpcps.tune.cli import main

sys.exit(main())
