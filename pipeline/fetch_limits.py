"""How much of a stranger's HTTP answer the product reads: :func:`read_bounded`.

Feeds (``pipeline/feeds.py``), linked pages, redirect and error bodies and robots.txt
files (``pipeline/links.py``) are all read with it: chunk by chunk *after*
decompression, so a small compressed answer that inflates to gigabytes stops at the cap,
and against one wall-clock deadline, so a server that drips a byte a second cannot hold
a fetch past it (a per-read timeout would not notice).
"""

from __future__ import annotations

import time
from typing import Literal

import httpx


class BodyCut(Exception):
    """The body was not read to its end: ``too_large`` (more than the cap after
    decompression) or ``timeout`` (not complete by the deadline)."""

    def __init__(self, kind: Literal["too_large", "timeout"]) -> None:
        super().__init__(kind)
        self.kind: Literal["too_large", "timeout"] = kind


def read_bounded(response: httpx.Response, max_bytes: int, deadline: float,
                 truncate: bool = False) -> bytes:
    """The decompressed body of a streamed ``response``. More than ``max_bytes`` raises
    :class:`BodyCut` (``too_large``), or with ``truncate`` ends the read and returns the
    first ``max_bytes`` (robots.txt: RFC 9309 asks for at least 500 KiB to be parsed).
    Still reading at ``deadline`` (``time.monotonic()``) raises ``timeout``."""
    chunks, size = [], 0
    for chunk in response.iter_bytes():
        chunks.append(chunk)
        size += len(chunk)
        if truncate and size >= max_bytes:
            return b"".join(chunks)[:max_bytes]
        if size > max_bytes:
            raise BodyCut("too_large")
        if time.monotonic() > deadline:
            raise BodyCut("timeout")
    return b"".join(chunks)
