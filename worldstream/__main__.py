import sys

from worldstream.cli import main

sys.exit(main())
