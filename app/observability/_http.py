"""HTTP plumbing of the standard-library senders (OTLP/HTTP export, Pushgateway push).

Both send one request with a body to a receiver and must see its answer as
it is: a redirect is refused rather than followed (urllib would replay a
``POST`` or ``PUT`` as a body-less ``GET``), and an error answer's body is
read, bounded, for the message.
"""

from __future__ import annotations

import http.client
import urllib.error
import urllib.request
from typing import Any

__all__ = ("no_redirect_opener", "read_error_body")


class _NoRedirectHandler(urllib.request.HTTPRedirectHandler):
    """Refuse redirects: urllib would replay the request as a body-less GET."""

    def redirect_request(
        self,
        req: urllib.request.Request,
        fp: Any,
        code: int,
        msg: str,
        headers: Any,
        newurl: str,
    ) -> None:
        """Return ``None`` so the 3xx surfaces as an :class:`HTTPError`."""
        return None


def no_redirect_opener() -> urllib.request.OpenerDirector:
    """A urllib opener that raises :class:`urllib.error.HTTPError` for a 3xx answer."""
    return urllib.request.build_opener(_NoRedirectHandler())


def read_error_body(exc: urllib.error.HTTPError, limit: int = 512) -> str | None:
    """Read (at most ``limit`` bytes of) an error answer's body, then close it.

    Returns:
        The body as text (undecodable bytes replaced), or ``None`` when it is
        empty or cannot be read.
    """
    try:
        return exc.read(limit).decode("utf-8", "replace") or None
    except (OSError, http.client.HTTPException):
        return None
    finally:
        exc.close()
