"""``python -m app``: the main job (see :mod:`app.cli`)."""

from app.cli import main

raise SystemExit(main())
