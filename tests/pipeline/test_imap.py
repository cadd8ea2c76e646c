"""IMAP reading against a real IMAP server: pymap (in-memory backend) on a loopback port,
filled through IMAP APPEND, read with STARTTLS and in clear."""

from __future__ import annotations

import datetime as dt
import imaplib
import ipaddress
import socket
import ssl
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from pipeline.imap import ImapConfig, ImapError, read_imap
from tests.conftest import free_port

FIXTURES = Path(__file__).parent / "fixtures"
USER, PASSWORD = "reader", "s3cret-imap"
NEWSLETTERS = ("imap_newsletter.eml", "imap_plain.eml", "imap_undecodable.eml")


def _self_signed_certificate(directory: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 made with ``cryptography``; the test trusts only it."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = dt.datetime.now(dt.timezone.utc)
    certificate = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName(
            [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256()))
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


@dataclass
class ImapServer:
    port: int
    ca_file: Path

    def config(self, **overrides) -> ImapConfig:
        settings = {"host": "127.0.0.1", "port": self.port, "security": "starttls",
                    "ca_file": self.ca_file, "username": USER,
                    "password_env": "TEST_IMAP_PASSWORD", "source": "harbor-inbox"}
        return ImapConfig(**{**settings, **overrides})

    def connect(self) -> imaplib.IMAP4:
        connection = imaplib.IMAP4("127.0.0.1", self.port, timeout=10)
        connection.starttls(ssl.create_default_context(cafile=str(self.ca_file)))
        connection.login(USER, PASSWORD)
        return connection


@pytest.fixture(scope="module")
def imap_server(tmp_path_factory):
    """A real pymap IMAP server (dict backend, STARTTLS) on a free loopback port."""
    directory = tmp_path_factory.mktemp("imap")
    cert, key = _self_signed_certificate(directory)
    port = free_port()
    log_path = directory / "pymap.log"
    with open(log_path, "wb") as log_file:
        process = subprocess.Popen(
            [sys.executable, "-c", "import sys; from pymap.main import main; sys.exit(main())",
             "--host", "127.0.0.1", "--port", str(port), "--cert", str(cert), "--key", str(key),
             "--no-service", "admin", "--no-service", "managesieve",
             "dict", "--demo-user", USER, "--demo-password", PASSWORD],
            stdout=log_file, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        while True:
            if process.poll() is not None:
                pytest.fail(f"pymap exited with {process.returncode}: {log_path.read_text()}")
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    pytest.fail(f"pymap did not listen on {port}: {log_path.read_text()}")
                time.sleep(0.1)
        yield ImapServer(port, cert)
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture
def newsletters_mailbox(imap_server, monkeypatch):
    """A fresh mailbox holding the three newsletters, APPENDed as unseen messages."""
    monkeypatch.setenv("TEST_IMAP_PASSWORD", PASSWORD)
    mailbox = f"News-{time.monotonic_ns()}"
    connection = imap_server.connect()
    try:
        assert connection.create(mailbox)[0] == "OK"
        for name in NEWSLETTERS:
            status, _ = connection.append(mailbox, None, None, (FIXTURES / name).read_bytes())
            assert status == "OK"
    finally:
        connection.logout()
    return mailbox


def _seen_flags(server: ImapServer, mailbox: str) -> list[bool]:
    connection = server.connect()
    try:
        connection.select(mailbox, readonly=True)
        _, data = connection.uid("SEARCH", None, "ALL")
        seen = []
        for uid in data[0].split():
            _, flags = connection.uid("FETCH", uid, "(FLAGS)")
            seen.append(b"\\Seen" in b" ".join(f for f in flags if isinstance(f, bytes)))
        return seen
    finally:
        connection.logout()


def test_reads_newsletters_like_eml_files(imap_server, newsletters_mailbox):
    result = read_imap(imap_server.config(mailbox=newsletters_mailbox, criteria="ALL"))

    titles = [a.title for a in result.articles]
    assert titles == [
        "Nordvik Semiconductor opens Europe's first 2 nm fab",
        "Port of Valona automates its container terminal",
        "Castell Foods agrees to buy Ridgeway Dairy",
        "Ledger Notes: central bank keeps rates on hold",
        "Delta Desk morning note",
    ]
    first = result.articles[0]
    assert first.id == "weekly-112@harbor.example#1"
    assert first.link == "https://harbor.example/stories/nordvik-fab"
    assert "€14bn of public support" in first.text
    assert first.date_published == dt.datetime(2026, 11, 3, 7, 30, tzinfo=dt.timezone.utc)
    assert {a.source for a in result.articles} == {"harbor-inbox"}
    # The plain note: its date normalised to UTC, its link found in the text.
    plain = result.articles[3]
    assert plain.date_published == dt.datetime(2026, 11, 4, 23, 5, tzinfo=dt.timezone.utc)
    assert plain.link == "https://ledger.example/notes/20261104"
    # The unknown charset: kept, undecodable bytes replaced, the defect reported.
    undecodable = result.articles[4]
    assert "\ufffd" in undecodable.text and "Windmark" in undecodable.text
    assert any("unknown charset 'x-no-such-charset'" in p for p in result.problems)
    # The section title without text is the one skipped item.
    assert result.skipped == 1
    assert any("This week's stories" in p and "skipped" in p for p in result.problems)
    # Read-only by default: nothing was flagged seen.
    assert _seen_flags(imap_server, newsletters_mailbox) == [False, False, False]


def test_unseen_with_mark_seen_reads_each_message_once(imap_server, newsletters_mailbox):
    config = imap_server.config(mailbox=newsletters_mailbox, criteria="UNSEEN", mark_seen=True)
    first = read_imap(config)
    assert len(first.articles) == 5
    assert _seen_flags(imap_server, newsletters_mailbox) == [True, True, True]
    second = read_imap(config)
    assert second.articles == [] and second.skipped == 0


def test_since_criterion_is_sent_to_the_server(imap_server, newsletters_mailbox):
    # Internal dates are the APPEND time (today): a future SINCE matches nothing.
    today = dt.datetime.now(dt.timezone.utc).date()
    assert len(read_imap(imap_server.config(
        mailbox=newsletters_mailbox, criteria="ALL",
        since=today - dt.timedelta(days=2))).articles) == 5
    assert read_imap(imap_server.config(
        mailbox=newsletters_mailbox, criteria="ALL",
        since=today + dt.timedelta(days=2))).articles == []
    assert ImapConfig(host="h", username="u", criteria="UNSEEN",
                      since=dt.date(2026, 11, 1)).search_criteria() == "(UNSEEN) SINCE 1-Nov-2026"


def test_plain_connection_reads_too(imap_server, newsletters_mailbox):
    result = read_imap(imap_server.config(mailbox=newsletters_mailbox, criteria="ALL",
                                          security="none"))
    assert len(result.articles) == 5


def test_failures_that_leave_nothing_to_read_raise_clear_errors(imap_server, monkeypatch):
    monkeypatch.setenv("TEST_IMAP_PASSWORD", "wrong")
    with pytest.raises(ImapError, match="login refused"):
        read_imap(imap_server.config())

    monkeypatch.setenv("TEST_IMAP_PASSWORD", PASSWORD)
    with pytest.raises(ImapError, match="cannot select mailbox"):
        read_imap(imap_server.config(mailbox="No-Such-Folder"))
    with pytest.raises(ImapError, match="search 'NOT-A-CRITERION' refused"):
        read_imap(imap_server.config(criteria="NOT-A-CRITERION"))
    # The server speaks plain IMAP first: implicit TLS cannot work against it.
    with pytest.raises(ImapError, match="TLS failed|cannot connect"):
        read_imap(imap_server.config(security="ssl"))
    # A certificate nobody vouches for is refused.
    with pytest.raises(ImapError, match="TLS failed"):
        read_imap(imap_server.config(ca_file=None))
    with pytest.raises(ImapError, match="cannot connect"):
        read_imap(imap_server.config(port=free_port()))

    monkeypatch.delenv("TEST_IMAP_PASSWORD")
    with pytest.raises(ImapError, match="TEST_IMAP_PASSWORD .* is not set"):
        read_imap(imap_server.config())
