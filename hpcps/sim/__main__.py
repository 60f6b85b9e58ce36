import sys

from hpcps.sim.cli import main

sys.exit(main())
