import sys

from dmd_dist.cli import main

sys.exit(main())
