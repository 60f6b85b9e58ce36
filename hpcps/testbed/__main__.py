import sys

from hpcps.testbed.cli import main

sys.exit(main())
