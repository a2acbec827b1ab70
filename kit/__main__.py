"""`python -m kit ...` runs the command-line interface (see kit/cli.py)."""

from kit.cli import main

raise SystemExit(main())
