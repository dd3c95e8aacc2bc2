"""Which implementation of the hot path runs: compiled, or its pure-Python twin.

The calls every instrumented node makes -- a span's start and end
(:class:`~app.observability.tracing.TracingService`), ``increment`` and
``observe_latency`` (:class:`~app.observability.metrics.MetricsCollector`) and
a collector's ``send`` (:class:`~collectors.base.Collector`) -- have a
compiled implementation in the optional C extension ``collectors._speedups``
(``collectors/_speedups.c``), built when the project is installed on a machine
with a C compiler. Each of those classes derives from the extension's base type
when it is present, and otherwise defines the same methods in Python. Both
build the same records, take the same fallbacks (the C code hands every
uncommon case -- attributes, errors, a remote parent, a full queue, a label set
not validated yet -- to the Python methods) and raise the same errors.

Set ``RISK_ENGINE_PURE_PYTHON=1`` in the environment before the first import
to run the pure-Python implementation even when the extension is built (the
test suite runs its core tests both ways).
"""

from __future__ import annotations

import os
from pathlib import Path
from types import ModuleType

import structlog

__all__ = ("COMPILED", "PURE_PYTHON_ENV", "speedups")

#: Environment variable that selects the pure-Python implementation.
PURE_PYTHON_ENV = "RISK_ENGINE_PURE_PYTHON"


def _load() -> ModuleType | None:
    if os.environ.get(PURE_PYTHON_ENV, "").strip() not in ("", "0"):
        return None
    try:
        from collectors import _speedups
    except ImportError as exc:
        built = list(Path(__file__).parent.glob("_speedups.*"))
        if any(path.suffix in (".so", ".pyd") for path in built):  # built, yet unusable
            structlog.get_logger(__name__).warning(
                "observability.compiled_hot_path_unavailable", error=str(exc)
            )
        return None
    return _speedups


#: The compiled extension module, or ``None`` when the pure-Python code runs.
speedups: ModuleType | None = _load()

#: Whether the compiled hot path is in use.
COMPILED: bool = speedups is not None
