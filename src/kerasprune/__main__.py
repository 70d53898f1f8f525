"""`python -m kerasprune ...` runs the command line."""

from kerasprune.cli import main

raise SystemExit(main())
