"""One poison message never stalls a mailbox (issue 29): the IMAP poller, reading a real
IMAP server (pymap, the fixture of ``test_ingest_inputs``), meets good newsletters and,
between them, messages no store can hold: a Date at 23:59:59 on 31 Dec 9999 ten hours
west of UTC (year 10000 in UTC), a Message-ID of 10,000 characters, a NUL in the subject,
a Date of 1899. Each poison message is skipped with a log line and counted
(``signals_ingest_items_skipped_total{source}`` when the reader cannot read it,
``signals_ingest_items_refused_total{source,reason}`` when the intake refuses it), the
good ones are stored exactly once, on SQLite and on PostgreSQL, and the next poll
stores what is new, re-stores nothing and refuses the poison again, without stalling."""

from __future__ import annotations

import asyncio
import logging

import pytest

from ingestion.config import ImapSourceConfig
from ingestion.intake import Intake
from ingestion.metrics import IngestMetrics
from ingestion.pollers import Pollers
from ingestion.store import Store
from tests.ingestion.test_ingest_inputs import _imap_login, imap_mailbox  # noqa: F401

FOLDER = "Poison"
SOURCE = "letters"


def message(message_id: str, subject: str, body: bytes, date: str = "Mon, 06 Apr 1987 "
            "10:00:00 +0000", charset: str = "utf-8") -> bytes:
    """A raw RFC 822 newsletter, one plain-text item (built by hand: the email package
    would fold or refuse the hostile headers)."""
    return (f"From: news@example.com\r\nTo: reader@example.com\r\nSubject: {subject}\r\n"
            f"Message-ID: <{message_id}>\r\nDate: {date}\r\nMIME-Version: 1.0\r\n"
            f"Content-Type: text/plain; charset={charset}\r\n"
            "Content-Transfer-Encoding: 8bit\r\n\r\n").encode() + body + b"\r\n"


def story(n: int) -> bytes:
    words = " ".join(f"m{n}w{k}" for k in range(30))  # unlike each other: no near copies
    return (f"Acme Corp agreed to buy Beta unit {n} for {n} mln dlrs in cash. {words}"
            ).encode()


LONG_ID = "L" * 9_980 + "@example.com"
MAILBOX = [  # (raw message, what becomes of it)
    (message("good-1@example.com", "Deal one", story(1)), "stored"),
    (message("late@example.com", "Far future", story(2),
             date="Fri, 31 Dec 9999 23:59:59 -1000"), "skipped"),
    (message(LONG_ID, "Long id", story(3)), "id_length"),
    # (a NUL in the body is dropped with the other control characters: the subject)
    (message("nul@example.com", "Nul \x00 subject", story(4)), "nul_character"),
    (message("old@example.com", "Old", story(5), date="Sun, 31 Dec 1899 12:00:00 +0000"),
     "date_range"),
    (message("charset@example.com", "Odd charset", story(6) + b" \xff\xfe\x80",
             charset="x-no-such-charset"), "stored"),  # read, with replacement characters
    (message("good-2@example.com", "Deal two", story(7)), "stored"),
]
GOOD_IDS = ["good-1@example.com#1", "charset@example.com#1", "good-2@example.com#1"]
REFUSED = ("id_length", "nul_character", "date_range")


def append(port: int, raws: list[bytes], create: bool = False) -> None:
    connection = _imap_login(port)
    if create:
        assert connection.create(FOLDER)[0] == "OK"
    for raw in raws:
        assert connection.append(FOLDER, None, None, raw)[0] == "OK"
    connection.logout()


def test_a_poison_message_is_skipped_counted_and_the_mailbox_read_on(
        imap_mailbox, db_url, caplog):  # noqa: F811 (the fixture, imported)
    append(imap_mailbox, [raw for raw, _ in MAILBOX], create=True)
    mailbox = ImapSourceConfig(host="127.0.0.1", port=imap_mailbox, security="none",
                               username="reader", password_env="TEST_INGEST_IMAP_PASSWORD",
                               mailbox=FOLDER, criteria="ALL", source=SOURCE,
                               lookback_days=None)
    store = Store(db_url)
    metrics = IngestMetrics()
    intake = Intake(store, metrics, 0.8, 128, shadow=False)

    async def accept(articles, source):
        return intake.accept(articles, source)

    pollers = Pollers(metrics, accept)

    def count(metric, *labels) -> float:
        return metric.labels(*labels)._value.get()

    try:
        with caplog.at_level(logging.INFO):
            assert asyncio.run(pollers.poll_imap(mailbox)) == len(GOOD_IDS)
        assert store.item_count() == len(GOOD_IDS)
        for external_id in GOOD_IDS:
            (item_id,) = store.find_items_by_external_id(external_id, SOURCE)
            assert store.get_item(item_id)["source"] == SOURCE
        odd = store.get_item(store.find_items_by_external_id("charset@example.com#1")[0])
        assert "\ufffd" in odd["text"]  # undecodable bytes replaced, not the item lost
        assert count(metrics.items_skipped, SOURCE) == 1
        for reason in REFUSED:
            assert count(metrics.items_refused, SOURCE, reason) == 1, reason
        logged = caplog.text
        assert "unreadable (OverflowError" in logged  # the year-10000 Date, with its uid
        for reason in REFUSED:
            assert f"refused ({reason})" in logged, reason
        assert "LLLL..." in logged and LONG_ID not in logged  # the id shortened

        # Polled again, with one new newsletter: only that one is stored; the poison is
        # met (and counted) again; the poll completes.
        append(imap_mailbox, [message("good-3@example.com", "Deal three", story(8))])
        assert asyncio.run(pollers.poll_imap(mailbox)) == 1
        assert store.item_count() == len(GOOD_IDS) + 1
        for external_id in [*GOOD_IDS, "good-3@example.com#1"]:
            assert len(store.find_items_by_external_id(external_id, SOURCE)) == 1
        assert count(metrics.duplicates, SOURCE, "repeat") == len(GOOD_IDS)
        assert count(metrics.items_accepted, SOURCE) == len(GOOD_IDS) + 1
        assert count(metrics.items_skipped, SOURCE) == 2
        for reason in REFUSED:
            assert count(metrics.items_refused, SOURCE, reason) == 2, reason
        assert count(metrics.polls, SOURCE, "ok") == 2
    finally:
        store.close()


@pytest.mark.parametrize("raw", [b"", b"\r\n", b"Subject: only a header\r\n\r\n"])
def test_an_empty_message_costs_nothing_but_itself(imap_mailbox, raw, tmp_path):  # noqa: F811
    """A message without a body (0 bytes where the server keeps one, headers alone) is
    noted and yields no item; the good one after it is stored."""
    connection = _imap_login(imap_mailbox)
    assert connection.create(FOLDER)[0] == "OK"
    appended = connection.append(FOLDER, None, None, raw)[0]
    connection.logout()
    append(imap_mailbox, [message("after@example.com", "After", story(9))])
    mailbox = ImapSourceConfig(host="127.0.0.1", port=imap_mailbox, security="none",
                               username="reader", password_env="TEST_INGEST_IMAP_PASSWORD",
                               mailbox=FOLDER, criteria="ALL", source=SOURCE,
                               lookback_days=None)
    store = Store(f"sqlite:///{tmp_path / 'ingest.db'}")
    metrics = IngestMetrics()
    intake = Intake(store, metrics, 0.8, 128, shadow=False)

    async def accept(articles, source):
        return intake.accept(articles, source)

    try:
        pollers = Pollers(metrics, accept)
        assert asyncio.run(pollers.poll_imap(mailbox)) == 1, appended
        assert store.find_items_by_external_id("after@example.com#1", SOURCE)
        assert asyncio.run(pollers.poll_imap(mailbox)) == 0
        assert store.item_count() == 1
        assert metrics.polls.labels(SOURCE, "ok")._value.get() == 2
    finally:
        store.close()
