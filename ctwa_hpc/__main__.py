"""``python -m ctwa_hpc`` → the ``ctwa-hpc`` command line."""
from .cli import main

raise SystemExit(main())
