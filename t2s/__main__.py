"""`python -m t2s`: the command line (`t2s.cli`)."""
from t2s.cli import main

raise SystemExit(main(standalone=True))
