import sys

from hashindex.cli import main

sys.exit(main())
