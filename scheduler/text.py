"""Text a job produced, made storable on every database (Django-free).

PostgreSQL's text cannot hold a NUL character and its jsonb cannot hold `\\u0000`; a lone
surrogate (Python's way of carrying undecodable bytes, e.g. '\\udcff') cannot be encoded to
UTF-8 at all, so neither database takes it. Such a character in a job's output, an exception
message or a data map would make the write of its result fail at every attempt. Each one
becomes U+FFFD, the replacement character (as for bytes of a shell job's output that are not
UTF-8), on both databases alike; everything else is kept as it is.
"""

from __future__ import annotations

import re
from typing import Any

REPLACEMENT = "\ufffd"
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


def storable_text(text: str) -> str:
    """`text` with each NUL and lone surrogate replaced by U+FFFD (the same object when there
    is nothing to replace: the common ASCII case costs two scans in C)."""
    if text.isascii():
        return text.replace("\x00", REPLACEMENT) if "\x00" in text else text
    return _UNSTORABLE.sub(REPLACEMENT, text)


def storable_data(value: Any) -> Any:
    """A JSON-like value with storable_text applied to every string, keys included, at any
    depth. Anything else is returned as it is (validation says what is not JSON data)."""
    if isinstance(value, str):
        return storable_text(value)
    if isinstance(value, dict):
        return {storable_text(k) if isinstance(k, str) else k: storable_data(v)
                for k, v in value.items()}
    if isinstance(value, list):
        return [storable_data(item) for item in value]
    return value
