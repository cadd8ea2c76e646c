"""What the product's clients of other people's HTTP servers share: reading a
``Retry-After`` answer (RFC 9110 section 10.2.3). The link stage (``pipeline/links.py``)
and the Google Trends stage (``pipeline/trends.py``) both wait what it asks."""

from __future__ import annotations

import email.utils
import time
from datetime import timezone


def retry_after_seconds(value: str | None, now: float | None = None) -> float | None:
    """A ``Retry-After`` header, delta-seconds or an HTTP-date, as seconds from ``now``
    (``time.time()`` by default; a date in the past is 0); None when absent or neither."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return max(0.0, when.timestamp() - (time.time() if now is None else now))
