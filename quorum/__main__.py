"""`python -m quorum`: the `quorum` command line."""

from quorum.producer.cli import main

raise SystemExit(main())
