"""A small web site on a loopback port with the pages the link stage must cope with.

Every page is written for the tests; the server counts requests per path, and separately
the answers that carried a body (200) and those that did not (304), so a test can prove
that nothing was downloaded twice.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Iterator

LEAD = ("Acme Robotics agreed to buy Widget Motors for 3.2 billion dollars in cash, the "
        "companies said on Tuesday, creating the largest maker of warehouse robots in Europe.")
BODY = [
    "The deal values Widget at a 40 percent premium to its closing price on Monday. Acme "
    "will fund it with cash on hand and a new term loan arranged by two banks.",
    "Regulators in Brussels and Washington must approve the purchase, which the companies "
    "expect to close in the third quarter. Analysts said overlap between the two product "
    "lines is small.",
    "Widget shares rose 35 percent in early trading while Acme gained 4 percent, as "
    "investors welcomed the plan to combine Widget's motors with Acme's control software.",
]
NAV = "Home | Markets | Technology | Opinion | Subscribe | Sign in"
COMMENT = "Reader comment: this merger is a terrible idea and the CEO should resign."
FOOTER = "Copyright 2024 Example News. Cookie settings. Privacy policy. Contact us."


def article_html(title: str, lead: str = LEAD, *, published: str = "2024-03-05",
                 canonical: str | None = None, lang: str = "en",
                 charset_meta: str | None = None) -> str:
    """An article page the way news sites build one: navigation, share links, related
    stories and a comment section around the article itself."""
    meta_charset = f'<meta charset="{charset_meta}">' if charset_meta else ""
    canonical_link = f'<link rel="canonical" href="{canonical}">' if canonical else ""
    paragraphs = "".join(f"<p>{p}</p>" for p in [lead, *BODY])
    return f"""<!doctype html><html lang="{lang}"><head>{meta_charset}
<title>{title} | Example News</title>{canonical_link}
<meta property="article:published_time" content="{published}T09:30:00Z">
<script>var tracking = "do not extract";</script></head>
<body><header><nav><ul><li><a href="/">Home</a></li><li><a href="/markets">Markets</a></li>
<li><a href="/tech">Technology</a></li></ul><p>{NAV}</p></nav></header>
<main><article><h1>{title}</h1><div class="byline">By A. Reporter</div>
<div class="share"><a href="#">Share on X</a> <a href="#">Share by e-mail</a></div>
{paragraphs}</article>
<aside class="related"><h3>Related stories</h3><ul><li><a href="/a">Ten gadgets to buy now</a></li>
<li><a href="/b">Weather warnings for the weekend</a></li></ul></aside>
<section id="comments" class="comments"><h3>Comments</h3><div class="comment"><p>{COMMENT}</p></div></section>
</main><footer><p>{FOOTER}</p></footer></body></html>"""


def story_title(number: str | int) -> str:
    return f"Company {number} wins a large contract"


def story_lead(number: str | int) -> str:
    return (f"Company {number} won a multi-year supply contract worth {number}00 million "
            "dollars from a national rail operator, it said on Monday.")


ROBOTS = "User-agent: *\nDisallow: /private/\n"
PDF = b"%PDF-1.4\n1 0 obj << /Type /Catalog >> endobj\ntrailer << >>\n%%EOF\n"
LATIN1_TEXT = ("Caf\u00e9 chain L\u00e9on & Fr\u00e8res raises \u20ac40 million to open "
               "stores across Europe")
"""Needs windows-1252 (the euro sign is 0x80 there, absent from ISO-8859-1)."""
ISO_TEXT = "Br\u00e4u AG und M\u00fcller S\u00f6hne fusionieren f\u00fcr 2 Mrd. \u00a3"
"""Fits ISO-8859-1."""


class LinkSite:
    """The site's routes and counters; ``url(path)`` gives a full URL."""

    def __init__(self, slow_s: float = 3.0, huge_bytes: int = 400_000,
                 robots: str = ROBOTS, story_delay_s: float = 0.0) -> None:
        self.slow_s = slow_s
        self.huge_bytes = huge_bytes
        self.robots = robots
        self.story_delay_s = story_delay_s
        """How long a /story/N page takes to answer (to see concurrency)."""
        self.in_flight = 0
        self.max_in_flight = 0
        self.base = ""
        self.requests: Counter[str] = Counter()
        self.bodies: Counter[str] = Counter()
        self.not_modified: Counter[str] = Counter()
        self.times: dict[str, list[float]] = {}
        """Monotonic arrival time of each request, per path."""
        self._lock = threading.Lock()

    def url(self, path: str) -> str:
        return self.base + path

    def count(self, counter: Counter[str], path: str) -> None:
        with self._lock:
            counter[path] += 1


def _handler(site: LinkSite) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:
            pass

        def _send(self, status: int, body: bytes = b"", content_type: str = "text/html; "
                  "charset=utf-8", headers: dict[str, str] | None = None,
                  length: bool = True) -> None:
            self.send_response(status)
            if content_type:
                self.send_header("Content-Type", content_type)
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            if length:
                self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if body:
                self.wfile.write(body)
            if status == 200:
                site.count(site.bodies, self.path)

        def _page(self, html: str | bytes, etag: str, content_type: str = "text/html; "
                  "charset=utf-8") -> None:
            """A page with a validator: revalidation gets a 304 without a body."""
            cache = {"ETag": f'"{etag}"', "Cache-Control": "no-cache"}
            if self.headers.get("If-None-Match") == f'"{etag}"':
                site.count(site.not_modified, self.path)
                self._send(304, content_type="", headers=cache, length=False)
                return
            body = html.encode("utf-8") if isinstance(html, str) else html
            self._send(200, body, content_type, cache)

        def _redirect(self, status: int, location: str) -> None:
            self._send(status, content_type="", headers={
                "Location": location, "Cache-Control": "max-age=3600"})

        def do_GET(self) -> None:  # noqa: N802
            site.count(site.requests, self.path)
            site.times.setdefault(self.path, []).append(time.monotonic())
            path = self.path.split("?")[0]
            with site._lock:
                site.in_flight += 1
                site.max_in_flight = max(site.max_in_flight, site.in_flight)
            try:
                self._route(path)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the client gave up (timeout, size cap): expected
            finally:
                with site._lock:
                    site.in_flight -= 1

        def _route(self, path: str) -> None:
            if path == "/robots.txt":
                self._send(200, site.robots.encode(), "text/plain",
                           {"Cache-Control": "max-age=3600"})
            elif path == "/news/acme-deal":
                self._page(article_html("Acme to buy Widget Motors for $3.2bn",
                                        canonical=site.url("/news/acme-deal")), "acme-1")
            elif path == "/amp/acme-deal":  # the same article on another URL
                self._page(article_html("Acme to buy Widget Motors for $3.2bn",
                                        canonical=site.url("/news/acme-deal")), "acme-amp")
            elif path == "/news/widget":
                self._page(article_html("Widget Motors shares jump on takeover",
                                        "Widget Motors shares jumped after Acme Robotics "
                                        "announced a cash offer for the company."), "widget-1")
            elif path.startswith("/r/"):
                hop = int(path.rsplit("/", 1)[1])
                if hop < 3:
                    self._redirect(301 if hop % 2 else 302, f"/r/{hop + 1}")
                else:
                    self._redirect(308, "/news/widget")
            elif path.startswith("/loop/"):
                hop = int(path.rsplit("/", 1)[1])
                self._redirect(302, f"/loop/{hop + 1}")
            elif path.startswith("/private/"):
                self._page(article_html("Secret"), "secret")
            elif path == "/busy":  # 429 with Retry-After once, then the page
                if site.requests[path] == 1:
                    self._send(429, b"slow down", "text/plain", {"Retry-After": "1"})
                else:
                    self._page(article_html("Chipmaker orders surge", "Orders at the chipmaker "
                                            "surged by half in the quarter."), "busy-1")
            elif path == "/always-busy":
                self._send(429, b"slow down", "text/plain", {"Retry-After": "3600"})
            elif path == "/flaky":  # 503 once, then the page
                if site.requests[path] == 1:
                    self._send(503, b"try later", "text/plain")
                else:
                    self._page(article_html("Bank raises dividend", "The bank raised its "
                                            "dividend by a fifth after record profit."), "flaky-1")
            elif path == "/slow":
                time.sleep(site.slow_s)
                self._page(article_html("Too late"), "slow")
            elif path == "/huge":  # declares its size
                self._send(200, b"<html><body><p>" + b"x" * site.huge_bytes + b"</p></body></html>")
            elif path == "/huge-stream":  # no Content-Length: only reading finds out
                self.send_response(200)
                self.send_header("Content-Type", "text/html")
                self.end_headers()
                for _ in range(site.huge_bytes // 10_000 + 1):
                    self.wfile.write(b"<p>" + b"y" * 10_000 + b"</p>")
                self.close_connection = True
            elif path == "/drip":  # a byte every 0.2 s: never silent long enough to time out
                self.send_response(200)
                self.send_header("Content-Type", "text/html")
                self.end_headers()
                for _ in range(50):
                    self.wfile.write(b" ")
                    self.wfile.flush()
                    time.sleep(0.2)
                self.close_connection = True
            elif path == "/report.pdf":
                self._send(200, PDF, "application/pdf")
            elif path == "/latin1":  # charset in the Content-Type header only
                html = article_html(LATIN1_TEXT, LATIN1_TEXT + ".", lang="fr")
                self._page(html.encode("windows-1252"), "latin1",
                           "text/html; charset=windows-1252")
            elif path == "/latin1-meta":  # charset in a <meta> only
                html = article_html(ISO_TEXT, ISO_TEXT + ".", charset_meta="iso-8859-1",
                                    lang="de")
                self._page(html.encode("iso-8859-1"), "latin1-meta", "text/html")
            elif path.startswith("/story/"):  # generic stories for newsletters
                number = path.rsplit("/", 1)[1]
                time.sleep(site.story_delay_s)
                self._page(article_html(story_title(number), story_lead(number)),
                           f"story-{number}")
            elif path == "/cookie-wall":
                self._page("<html><body><p>Please accept cookies.</p></body></html>", "wall")
            else:
                self._send(404, b"<html><body><h1>Not found</h1></body></html>")

    return Handler


@contextmanager
def serve_link_site(site: LinkSite | None = None) -> Iterator[LinkSite]:
    site = site or LinkSite()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(site))
    server.daemon_threads = True
    site.base = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield site
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
