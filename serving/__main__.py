"""python -m serving: the same as python serve.py, the composition root outside this package."""
import sys

from serve import main

sys.exit(main())
