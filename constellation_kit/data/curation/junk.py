"""Why a raw document cannot be curated at all (before any quality judgement), or ``None``."""

import unicodedata

MAX_CONTROL_FRACTION = 0.01
"""More than 1% control characters (other than tab, newline, carriage return, form feed) marks bytes
that are not prose: a binary file read as text, a mis-decoded dump. Real text has none at all."""


def text_skip_reason(text: str) -> str | None:
    """``"empty"`` (nothing but whitespace), ``"binary"`` (a NUL byte, or control characters over
    :data:`MAX_CONTROL_FRACTION`), else ``None``."""
    if not text.strip():
        return "empty"
    if "\x00" in text:
        return "binary"
    controls = sum(1 for ch in text if ch not in "\t\n\r\f\v" and unicodedata.category(ch) == "Cc")
    if controls > MAX_CONTROL_FRACTION * len(text):
        return "binary"
    return None


def decode_utf8(raw: bytes) -> str | None:
    """The text of ``raw`` if it is valid UTF-8 (a leading byte-order mark dropped), else ``None``."""
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        return None
