"""The library's loggers: silent until the application configures logging.

Every module of the library (``app`` and ``collectors``) gets its logger with
:func:`get_logger` instead of ``structlog.get_logger``. Unconfigured,
structlog prints every event to stdout, which suits an application and not a
library: a library user who never set up logging would see ``[debug]`` and
``[info]`` lines from every run and every close.

The logger this returns decides at each call:

* once the application has configured structlog (``structlog.configure``,
  or ``structlog.testing.capture_logs`` in tests), events go through that
  configuration, exactly as ``structlog.get_logger(name)`` would send them;
* otherwise they go to the standard library logger of the same name, and the
  ``NullHandler`` this module puts on the library's top-level loggers keeps
  them silent unless the application configures :mod:`logging` (then they
  are formatted as ``event key=value ...``, honouring its levels).

Libraries following structlog's documentation leave ``structlog.configure``
to the application; handing events to :mod:`logging` with a ``NullHandler``
when it has not is what the Python logging HOWTO prescribes for libraries
("Configuring Logging for a Library"), so this module never configures
structlog globally.
"""

from __future__ import annotations

import logging
from collections.abc import MutableMapping
from typing import Any

import structlog

__all__ = ("LIBRARY_LOGGERS", "LibraryLogger", "get_logger")

#: The library's top-level logger names; each gets a ``NullHandler``.
LIBRARY_LOGGERS = ("app", "collectors")

for _name in LIBRARY_LOGGERS:
    logging.getLogger(_name).addHandler(logging.NullHandler())


def _to_stdlib_call(
    logger: Any, method_name: str, event_dict: MutableMapping[str, Any]
) -> tuple[tuple[str], dict[str, Any]]:
    """Last processor of the stdlib route: ``event key=value ...``, and ``exc_info``."""
    exc_info = event_dict.pop("exc_info", None)
    event = event_dict.pop("event", "")
    parts = [str(event), *(f"{key}={value!r}" for key, value in event_dict.items())]
    return (" ".join(parts),), ({"exc_info": exc_info} if exc_info else {})


class LibraryLogger:
    """A structlog-style logger for library code (see the module docstring).

    Args:
        name: The logger name, usually the module's ``__name__``.
    """

    __slots__ = ("_configured", "_stdlib")

    def __init__(self, name: str) -> None:
        self._configured: Any = structlog.get_logger(name)
        self._stdlib: Any = structlog.wrap_logger(
            logging.getLogger(name),
            processors=[structlog.stdlib.filter_by_level, _to_stdlib_call],
            wrapper_class=structlog.stdlib.BoundLogger,
            cache_logger_on_first_use=True,
        )

    def _target(self) -> Any:
        return self._configured if structlog.is_configured() else self._stdlib

    def debug(self, event: str, **kw: Any) -> None:
        """Log ``event`` at debug level with ``kw`` as its key/value pairs."""
        self._target().debug(event, **kw)

    def info(self, event: str, **kw: Any) -> None:
        """Log ``event`` at info level."""
        self._target().info(event, **kw)

    def warning(self, event: str, **kw: Any) -> None:
        """Log ``event`` at warning level."""
        self._target().warning(event, **kw)

    def error(self, event: str, **kw: Any) -> None:
        """Log ``event`` at error level."""
        self._target().error(event, **kw)

    def critical(self, event: str, **kw: Any) -> None:
        """Log ``event`` at critical level."""
        self._target().critical(event, **kw)

    def exception(self, event: str, **kw: Any) -> None:
        """Log ``event`` at error level with the exception being handled."""
        self._target().exception(event, **kw)


def get_logger(name: str) -> LibraryLogger:
    """The logger library code uses: quiet unless the application configured logging.

    Args:
        name: The logger name, usually the module's ``__name__``.
    """
    return LibraryLogger(name)
