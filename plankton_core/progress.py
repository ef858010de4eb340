"""Progress for long loops: a tqdm bar on a terminal, plain log lines in a pod."""

from __future__ import annotations

import logging
import os
import re
import sys
import time
from collections.abc import Iterable, Iterator
from typing import TypeVar

from tqdm import tqdm

T = TypeVar("T")
log = logging.getLogger("plankton")


def progress(items: Iterable[T], total: int | None = None, desc: str = "", every_s: float = 30.0) -> Iterator[T]:
    """Yield `items`, showing progress without flooding logs when stderr is not a terminal."""
    if sys.stderr.isatty():
        yield from tqdm(items, total=total, desc=desc, dynamic_ncols=True)
        return
    start = last = time.monotonic()
    count = 0
    for count, item in enumerate(items, 1):
        yield item
        now = time.monotonic()
        if now - last >= every_s:
            last = now
            rate = count / max(now - start, 1e-9)
            of = f"/{total}" if total else ""
            log.info("%s: %d%s done (%.1f/s)", desc, count, of, rate)
    if count:
        log.info("%s: %d done in %.1fs", desc, count, time.monotonic() - start)


SECRET_ENV = ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_ACCESS_KEY_ID", "PUSHGATEWAY_PASSWORD")
_PATTERNS = (
    (re.compile(r"(?P<keep>\b[a-zA-Z][a-zA-Z0-9+.-]*://)[^/\s@]+@"), r"\g<keep>***@"),  # URL userinfo
    (re.compile(r"(?P<keep>Credential=)[^/,\s]+"), r"\g<keep>***"),  # SigV4 Authorization header
    (re.compile(r"(?P<keep>Signature=)[0-9a-fA-F]+"), r"\g<keep>***"),
    (
        re.compile(r"(?P<keep>X-Amz-(?:Credential|Signature|Security-Token)=)[^&\s'\"]+"),
        r"\g<keep>***",
    ),  # presigned URLs
    (
        re.compile(r"(?P<keep>['\"]?(?:x-amz-security-token|authorization)['\"]?\s*[:=]\s*['\"]?)[^'\",}\s]+", re.I),
        r"\g<keep>***",
    ),
    (
        re.compile(
            r"(?P<keep>(?:aws_secret_access_key|aws_session_token|secret_key|password|passwd|token)['\"]?\s*[:=]\s*['\"]?)[^'\",}\s]+",
            re.I,
        ),
        r"\g<keep>***",
    ),
)


def redact(text: str) -> str:
    """`text` with secrets replaced by `***`: URL userinfo, S3 signatures and credentials, and the values of
    the SECRET_ENV variables (AWS keys, the Pushgateway password) wherever they appear (botocore's debug logs
    print request headers)."""
    for pattern, repl in _PATTERNS:
        text = pattern.sub(repl, text)
    for var in SECRET_ENV:
        value = os.environ.get(var, "")
        if len(value) >= 4:
            text = text.replace(value, "***")
    return text


class RedactingFilter(logging.Filter):
    """Redacts every record a handler emits (message, arguments and traceback), whichever logger made it."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a malformed record: leave it to the handler to report
            return True
        record.msg, record.args = redact(message), None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        return True


def setup_logging(level: int = logging.INFO) -> None:
    """Log lines to stderr; every handler of the root logger redacts secrets (`RedactingFilter`)."""
    logging.basicConfig(level=level, format="%(asctime)s %(name)s %(levelname)s %(message)s", stream=sys.stderr)
    root = logging.getLogger()
    root.setLevel(level)
    for handler in root.handlers:
        if not any(isinstance(f, RedactingFilter) for f in handler.filters):
            handler.addFilter(RedactingFilter())
