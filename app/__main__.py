"""``python -m app``: the main job (see :mod:`app.cli`)."""

import sys

try:
    from app.cli import main

    status = main()
except KeyboardInterrupt:  # Ctrl-C before the job has its own handling (while importing)
    sys.stderr.write("python -m app: interrupted\n")
    status = 130
raise SystemExit(status)
