import sys

from clip_backdoor.cli import main

sys.exit(main())
