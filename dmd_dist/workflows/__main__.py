import sys

from dmd_dist.workflows import main

sys.exit(main())
