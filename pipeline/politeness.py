"""What the product's clients of other people's HTTP servers share: reading a
``Retry-After`` answer (RFC 9110 section 10.2.3) and spacing requests to one server
(:class:`RequestPacer`). The link stage (``pipeline/links.py``, one pacer per host) and
the Google Trends stage (``pipeline/trends.py``, one pacer for the service, a Ray actor
when sharded) both wait what a server asks and space their requests with it."""

from __future__ import annotations

import email.utils
import threading
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


class RequestPacer:
    """Hands out request slots at least ``min_interval_s`` apart.

    Used in-process by one client, or as a Ray actor shared by all shards (an actor
    runs one method call at a time, which is what makes the spacing global).
    """

    def __init__(self, min_interval_s: float) -> None:
        self.min_interval_s = min_interval_s
        self._next_slot = 0.0
        self._lock = threading.Lock()

    def reserve(self) -> float:
        """Reserve the next slot; returns how long the caller must wait for it (s)."""
        with self._lock:
            now = time.monotonic()
            slot = max(now, self._next_slot)
            self._next_slot = slot + self.min_interval_s
            return slot - now

    def hold(self, seconds: float) -> None:
        """No slot before ``seconds`` from now: one worker's 429 pauses every worker."""
        with self._lock:
            self._next_slot = max(self._next_slot, time.monotonic() + seconds)
