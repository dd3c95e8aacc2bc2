"""Push a batch job's final metrics to a Prometheus Pushgateway.

A batch run ends before Prometheus's next scrape, so its counters would never
reach any rate panel. Prometheus's answer for batch jobs is the Pushgateway:
the job PUTs its metrics there once, at the end, and Prometheus scrapes the
gateway (with ``honor_labels: true``, so the pushed ``job``/``instance`` labels
are kept).

:func:`push_metrics` speaks the Pushgateway's HTTP protocol with the standard
library: an HTTP ``PUT`` of the text exposition format 0.0.4 to
``<gateway>/metrics/job/<job>{/<label>/<value>}``, which replaces every metric
of that grouping key. Label values are escaped as the reference client
(prometheus_client ``push_to_gateway``) does: URL-quoted, or as
``<label>@base64/<url-safe base64>`` when the value holds a ``/`` or a space,
which a path segment cannot carry.
"""

from __future__ import annotations

import base64
import http.client
import math
import re
import urllib.error
import urllib.request
from collections.abc import Mapping
from typing import Final
from urllib.parse import quote, urlsplit

from app.observability._http import no_redirect_opener, read_error_body
from app.observability.validation import check_label_value, preview

__all__ = ("DEFAULT_JOB", "PushgatewayError", "grouping_path", "push_metrics")

#: The ``job`` label of the main job's pushed metrics.
DEFAULT_JOB: Final = "risk_engine_batch"

_CONTENT_TYPE: Final = "text/plain; version=0.0.4; charset=utf-8"
_LABEL_NAME: Final = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")


class PushgatewayError(RuntimeError):
    """A push that did not succeed: network error, timeout or a non-2xx answer."""


def _segment(name: str, value: str) -> str:
    """One ``/<name>/<value>`` pair of the grouping-key path."""
    if "/" in value or " " in value:
        encoded = base64.urlsafe_b64encode(value.encode("utf-8")).decode("ascii")
        return f"/{name}@base64/{encoded}"
    return f"/{name}/{quote(value, safe='')}"


def grouping_path(job: str, grouping_key: Mapping[str, str] | None = None) -> str:
    """The URL path of a grouping key: ``/metrics/job/<job>{/<label>/<value>}``.

    Args:
        job: The ``job`` label.
        grouping_key: Further labels (``instance``...), in sorted order.

    Returns:
        The escaped path.

    Raises:
        ValueError: ``job`` or a value is empty, not valid Unicode, holds a
            control character or is too long; a label name is not a
            Prometheus label name or is ``job``.
        TypeError: A value is not a ``str``.
    """
    path = "/metrics" + _segment("job", check_label_value("job", job))
    for name, value in sorted((grouping_key or {}).items()):
        if not isinstance(name, str) or not _LABEL_NAME.match(name) or name == "job":
            raise ValueError(f"grouping key label {preview(name)} is not a label name "
                             "other than 'job'")
        path += _segment(name, check_label_value(f"grouping key {name}", value))
    return path


def push_metrics(
    gateway: str,
    exposition: str,
    *,
    job: str = DEFAULT_JOB,
    grouping_key: Mapping[str, str] | None = None,
    timeout: float = 10.0,
) -> str:
    """Replace the metrics of one grouping key on a Pushgateway (HTTP ``PUT``).

    Blocks for up to about ``timeout`` seconds per network step; meant for
    the end of a batch job, never for a workflow node.

    Args:
        gateway: The Pushgateway's base URL, e.g. ``http://127.0.0.1:9091``.
        exposition: The metrics in the Prometheus text format 0.0.4 (what
            ``obs.metrics.render_prometheus()`` returns).
        job: The ``job`` label of the pushed metrics.
        grouping_key: Further grouping labels, typically ``instance``.
        timeout: Seconds allowed for connecting and for the answer.

    Returns:
        The URL the metrics were pushed to.

    Raises:
        ValueError: The gateway is not an ``http``/``https`` URL with a host,
            carries credentials, a query or a fragment, the timeout is not a
            positive number, or the grouping key is invalid (see
            :func:`grouping_path`).
        PushgatewayError: The push failed; the message gives the reason
            (the gateway's own error text for a non-2xx answer).
    """
    parts = urlsplit(gateway)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"Pushgateway URL must be http(s)://host[:port], got {preview(gateway)}")
    if parts.username is not None or parts.password is not None:
        raise ValueError("Pushgateway URL must not carry credentials")
    if parts.query or parts.fragment:
        raise ValueError(f"Pushgateway URL must not have a query or fragment: {preview(gateway)}")
    if not (math.isfinite(timeout) and timeout > 0):
        raise ValueError(f"timeout must be a positive number of seconds, got {timeout!r}")
    url = gateway.rstrip("/") + grouping_path(job, grouping_key)
    request = urllib.request.Request(
        url, data=exposition.encode("utf-8"), method="PUT",
        headers={"Content-Type": _CONTENT_TYPE},
    )
    try:
        with no_redirect_opener().open(request, timeout=timeout) as response:
            response.read()
    except urllib.error.HTTPError as exc:
        detail = (read_error_body(exc) or "").strip()
        raise PushgatewayError(
            f"{url} answered HTTP {exc.code} {exc.reason}" + (f": {detail}" if detail else "")
        ) from None
    except (OSError, http.client.HTTPException) as exc:  # URLError, timeouts, resets
        reason = getattr(exc, "reason", exc)
        raise PushgatewayError(f"cannot reach {url}: {reason}") from None
    return url
