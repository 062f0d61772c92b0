"""Credentials never leave the process: one redaction for logs, errors, gap reasons, summaries and the wire.

A URL such as ``rtsp://user:secret@camera/stream`` is shown as ``rtsp://user:***@camera/stream``
wherever it appears inside a text (FFmpeg quotes the URL it failed on inside its own error
messages, so redacting only the URL we print is not enough). Needs only the standard library.
"""
from __future__ import annotations

import logging
import re
from typing import Any

# scheme://user:password@ — the password may hold anything but '@', '/' and whitespace.
_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.\-]*://)(?P<user>[^:@/\s'\"]*):(?P<password>[^@/\s'\"]*)@")
# Query parameters that carry secrets in camera/stream URLs (?password=…, &token=…).
_QUERY_SECRET = re.compile(r"(?P<key>[?&](?:password|passwd|pwd|pass|token|access_token|auth|key|secret)=)[^&\s'\"#]*",
                           re.IGNORECASE)

MASK = "***"


def redact(text: Any) -> str:
    """``text`` as a string with every URL password (and secret query parameter) replaced by ``***``."""
    s = text if isinstance(text, str) else str(text)
    if "@" in s:
        s = _USERINFO.sub(lambda m: f"{m['scheme']}{m['user']}:{MASK}@" if m["password"] else m[0], s)
    if "=" in s:
        s = _QUERY_SECRET.sub(lambda m: m["key"] + MASK, s)
    return s


def redact_value(value: Any, depth: int = 0) -> Any:
    """``value`` with every string in it redacted (dicts and lists walked, a few levels deep)."""
    if isinstance(value, str):
        return redact(value)
    if depth > 8:
        return value
    if isinstance(value, dict):
        return {k: redact_value(v, depth + 1) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(redact_value(v, depth + 1) for v in value)
    return value


class RedactingFilter(logging.Filter):
    """A logging filter that redacts the formatted message (arguments included) and any traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:      # a broken format string is logging's problem to report, not ours
            return True
        clean = redact(message)
        if clean != message:
            record.msg, record.args = clean, None
        if record.exc_info and record.exc_info[1] is not None:
            text = logging.Formatter().formatException(record.exc_info)
            cleaned = redact(text)
            if cleaned != text:
                record.exc_text, record.exc_info = cleaned, None
        return True
