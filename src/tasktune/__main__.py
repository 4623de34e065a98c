import sys

from tasktune.cli import main

sys.exit(main())
