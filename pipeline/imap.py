"""Newsletters from an IMAP mailbox, read with the stdlib ``imaplib``.

A subscription address collects newsletters in a mailbox; this reader logs in, selects
the mailbox, asks the server for the messages matching a SEARCH criterion (``UNSEEN``,
``SINCE 1-Nov-2026``, ...) and parses each one with the very code that reads ``.eml``
files (:func:`pipeline.emails.read_message_bytes`): HTML preferred, one item per
heading, several items per newsletter. The result is the same
:class:`~pipeline.sources.ReadResult` as every other reader's, with skipped items and
problems counted.

Messages are addressed by UID (stable across sessions, unlike sequence numbers) and
fetched with ``BODY.PEEK[]``, which leaves the ``\\Seen`` flag alone: a message is
flagged seen (``mark_seen``) only after it was fetched and parsed, so a run that fails
half-way leaves the rest to be read next time with ``UNSEEN``.

Only failures that leave nothing to read raise :class:`ImapError` (cannot connect, TLS
or login refused, no such mailbox, a bad SEARCH criterion); one message that cannot be
fetched or parsed is skipped, logged and counted, and the others are kept. A connection
lost half-way ends the run with what was read so far and a problem noted.
"""

from __future__ import annotations

import imaplib
import logging
import os
import socket
import ssl
from datetime import date
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from pipeline.emails import read_message_bytes
from pipeline.sources import ReadResult

log = logging.getLogger(__name__)

_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


class ImapConfig(BaseModel):
    """Where the newsletters are and which of them to read."""

    model_config = ConfigDict(extra="forbid")

    host: str = Field(description="IMAP server host name or address.")
    port: int | None = Field(
        default=None, ge=1, le=65535,
        description="Server port; default 993 with security='ssl', else 143.")
    security: Literal["ssl", "starttls", "none"] = Field(
        default="ssl",
        description="'ssl': TLS from the first byte (IMAPS, port 993); 'starttls': plain "
        "connection upgraded with STARTTLS before login; 'none': no encryption (only for a "
        "server on loopback or a trusted network: the password crosses in clear).")
    ca_file: Path | None = Field(
        default=None,
        description="PEM file of certificate authorities to trust instead of the system's "
        "(a private or self-signed server certificate). Certificates and host names are "
        "always verified.")
    username: str = Field(description="Login name of the mailbox.")
    password_env: str = Field(
        default="SIGNALS_IMAP_PASSWORD",
        description="Name of the environment variable holding the password; the password "
        "itself never appears in a config file.")
    mailbox: str = Field(default="INBOX", description="Mailbox (folder) to read.")
    criteria: str = Field(
        default="UNSEEN",
        description="IMAP SEARCH criteria (RFC 3501 section 6.4.4), e.g. 'UNSEEN', 'ALL', "
        "'FROM \"news@example.com\"'. Combined (AND) with ``since`` when that is set.")
    since: date | None = Field(
        default=None,
        description="Only messages whose internal (arrival) date is on or after this day "
        "(IMAP SINCE).")
    mark_seen: bool = Field(
        default=False,
        description="Flag each message \\Seen once it has been read, so criteria 'UNSEEN' "
        "does not return it again. Off: the mailbox is opened read-only.")
    timeout_s: float = Field(default=30.0, gt=0, description="Socket timeout in seconds.")
    source: str = Field(default="imap", description="``Article.source`` of the items read.")

    def search_criteria(self) -> str:
        """The SEARCH criteria sent to the server: ``criteria`` AND ``since``."""
        if self.since is None:
            return self.criteria
        since = f"SINCE {self.since.day}-{_MONTHS[self.since.month - 1]}-{self.since.year}"
        return f"({self.criteria}) {since}"

    def effective_port(self) -> int:
        return self.port or (993 if self.security == "ssl" else 143)


class ImapError(Exception):
    """The mailbox could not be read at all: connection, TLS, login, mailbox or search."""

    def __init__(self, where: str, reason: str) -> None:
        super().__init__(f"IMAP {where}: {reason}")
        self.where = where
        self.reason = reason


def _ssl_context(config: ImapConfig) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(config.ca_file) if config.ca_file else None)


def _connect(config: ImapConfig, where: str) -> imaplib.IMAP4:
    port = config.effective_port()
    try:
        if config.security == "ssl":
            connection = imaplib.IMAP4_SSL(config.host, port, ssl_context=_ssl_context(config),
                                           timeout=config.timeout_s)
        else:
            connection = imaplib.IMAP4(config.host, port, timeout=config.timeout_s)
            if config.security == "starttls":
                connection.starttls(ssl_context=_ssl_context(config))
    except ssl.SSLError as exc:
        raise ImapError(where, f"TLS failed ({exc})") from exc
    except (OSError, imaplib.IMAP4.error) as exc:
        raise ImapError(where, f"cannot connect ({type(exc).__name__}: {exc})") from exc
    return connection


def _password(config: ImapConfig, where: str) -> str:
    password = os.environ.get(config.password_env)
    if password is None:
        raise ImapError(where, f"environment variable {config.password_env} (the password) "
                        "is not set")
    return password


def _message_bytes(fetched: list) -> bytes | None:
    """The literal of a ``UID FETCH (BODY.PEEK[])`` response: the one (header, bytes)
    pair in it; servers may also send unsolicited FLAGS lines beside it."""
    for part in fetched:
        if isinstance(part, tuple) and len(part) == 2 and b"BODY[]" in part[0]:
            return part[1]
    return None


def read_imap(config: ImapConfig) -> ReadResult:
    """The newsletter items of every message in ``config.mailbox`` that matches the
    search criteria, oldest UID first.

    Raises :class:`ImapError` when the mailbox cannot be read at all; a message that
    cannot be fetched or parsed is skipped and counted in the result.
    """
    where = f"{config.username}@{config.host}:{config.effective_port()}/{config.mailbox}"
    password = _password(config, where)
    connection = _connect(config, where)
    result = ReadResult()
    try:
        try:
            connection.login(config.username, password)
        except imaplib.IMAP4.error as exc:
            raise ImapError(where, f"login refused ({exc})") from exc
        # imaplib wants a mailbox name with spaces quoted.
        mailbox = f'"{config.mailbox}"' if " " in config.mailbox else config.mailbox
        status, data = connection.select(mailbox, readonly=not config.mark_seen)
        if status != "OK":
            raise ImapError(where, f"cannot select mailbox ({_text(data)})")
        criteria = config.search_criteria()
        try:
            status, data = connection.uid("SEARCH", None, criteria)
        except imaplib.IMAP4.error as exc:
            raise ImapError(where, f"search {criteria!r} refused ({exc})") from exc
        if status != "OK":
            raise ImapError(where, f"search {criteria!r} failed ({_text(data)})")
        uids = sorted((data[0] or b"").split(), key=int)
        log.info("%s: %d messages match %r", where, len(uids), criteria)
        for done, uid in enumerate(uids):
            try:
                _read_one(connection, config, where, uid, result)
            except (OSError, imaplib.IMAP4.abort) as exc:
                # Keep what was read (those messages may already be flagged seen, so
                # raising would lose them); the rest stay unseen for the next run.
                result.note(f"{where}: connection lost after {done} of {len(uids)} "
                            f"messages ({type(exc).__name__}: {exc}); the rest are left "
                            "for the next run", level=logging.ERROR)
                break
    except (OSError, imaplib.IMAP4.abort) as exc:
        raise ImapError(where, f"connection lost ({type(exc).__name__}: {exc})") from exc
    finally:
        _logout(connection)
    log.info("%s: %d articles, %d skipped, %d problems", where, len(result.articles),
             result.skipped, len(result.problems))
    return result


def _read_one(connection: imaplib.IMAP4, config: ImapConfig, where: str, uid: bytes,
              result: ReadResult) -> None:
    label = f"imap {where} uid {uid.decode()}"
    try:
        status, fetched = connection.uid("FETCH", uid, "(BODY.PEEK[])")
    except imaplib.IMAP4.error as exc:
        result.note(f"{label}: fetch refused ({exc}); skipped", skipped=True)
        return
    raw = _message_bytes(fetched) if status == "OK" else None
    if raw is None:
        result.note(f"{label}: fetch returned no message ({status} {_text(fetched)}); "
                    "skipped", skipped=True)
        return
    read_message_bytes(raw, config.source, label, result)
    if config.mark_seen:
        status, data = connection.uid("STORE", uid, "+FLAGS.SILENT", r"(\Seen)")
        if status != "OK":
            result.note(f"{label}: could not flag it seen ({_text(data)}); it will be read "
                        "again")


def _logout(connection: imaplib.IMAP4) -> None:
    try:
        connection.logout()
    except (OSError, imaplib.IMAP4.error, socket.timeout):
        pass  # already gone; nothing left to release


def _text(data: list) -> str:
    parts = [p.decode("utf-8", "replace") if isinstance(p, bytes) else str(p)
             for p in data or [] if p is not None]
    return " ".join(parts)[:200]
