import sys

from xgrader.cli.main import main

sys.exit(main())
