"""`python -m pipelines.params`: the validate command (pipelines/params/validate.py)."""

import sys

from pipelines.params.validate import main

sys.exit(main())
