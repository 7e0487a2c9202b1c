"""`python -m t2s.bench`: the benchmark's command line (the same as `python -m t2s bench`)."""
from . import main

raise SystemExit(main())
