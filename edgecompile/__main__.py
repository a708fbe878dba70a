import sys

from edgecompile.cli import main

sys.exit(main())
