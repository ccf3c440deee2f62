"""One event per line on stderr (journald keeps them); never the cookie."""

from __future__ import annotations

import logging
import sys
import time


class _LineFormatter(logging.Formatter):
    def __init__(self, node: str, stamps: bool) -> None:
        super().__init__()
        self._node = node
        self._stamps = stamps

    def format(self, record: logging.LogRecord) -> str:
        msg = record.getMessage().replace("\n", " | ")
        if record.exc_info and record.levelno >= logging.ERROR:
            etype, evalue = record.exc_info[0], record.exc_info[1]
            msg += f" ({etype.__name__ if etype else 'error'}: {evalue})"
        layer = record.name.removeprefix("mn_node.")
        head = f"{record.levelname:<7} {self._node} {layer}: "
        if self._stamps:
            t = time.gmtime(record.created)
            ms = int(record.msecs)
            head = time.strftime("%Y-%m-%dT%H:%M:%S", t) + f".{ms:03d}Z " + head
        return head + msg


class _MalformedHttpFilter(logging.Filter):
    """aiohttp logs a request its parser refuses (garbage from the network, answered 400) as
    an ERROR with a traceback; that is the client's fault, not the node's: one INFO line."""

    def filter(self, record: logging.LogRecord) -> bool:
        from aiohttp.http_exceptions import HttpProcessingError

        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, HttpProcessingError):
            record.msg = "malformed HTTP request refused (400): %s"
            record.args = (str(exc.message).splitlines()[0] if exc.message else type(exc).__name__,)
            record.levelno, record.levelname = logging.INFO, "INFO"
            record.exc_info, record.exc_text = None, None
        return True


def setup_logging(node: str, level: str = "INFO") -> None:
    """Configure the root logger. Under journald (``JOURNAL_STREAM``) timestamps are omitted."""
    import os

    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_LineFormatter(node, stamps="JOURNAL_STREAM" not in os.environ))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for noisy in ("zeroconf", "aiohttp.access", "asyncio"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    server = logging.getLogger("aiohttp.server")
    if not any(isinstance(f, _MalformedHttpFilter) for f in server.filters):
        server.addFilter(_MalformedHttpFilter())
