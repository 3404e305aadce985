"""Why a raw document cannot be curated at all (before any quality judgement), or ``None``."""

import re

MAX_CONTROL_FRACTION = 0.01
"""More than 1% control characters (other than tab, newline, carriage return, form feed) marks bytes
that are not prose: a binary file read as text, a mis-decoded dump. Real text has none at all."""

_CONTROL = re.compile(r"[\x00-\x08\x0e-\x1f\x7f-\x9f]")
"""Unicode category Cc (U+0000-U+001F, U+007F-U+009F) but tab, newline, vertical tab, form feed and
carriage return (U+0009-U+000D): a regex, not a per-character loop, as every document passes here."""


def text_skip_reason(text: str) -> str | None:
    """``"empty"`` (nothing but whitespace), ``"invalid_utf8"`` (a lone surrogate, which JSON's
    ``\\ud800`` escapes can smuggle into valid UTF-8 bytes and no writer downstream accepts),
    ``"binary"`` (a NUL byte, or control characters over :data:`MAX_CONTROL_FRACTION`), else ``None``."""
    if not text.strip():
        return "empty"
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return "invalid_utf8"
    if "\x00" in text:
        return "binary"
    controls = len(_CONTROL.findall(text))
    if controls > MAX_CONTROL_FRACTION * len(text):
        return "binary"
    return None


def decode_utf8(raw: bytes) -> str | None:
    """The text of ``raw`` if it is valid UTF-8 (a leading byte-order mark dropped), else ``None``."""
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        return None
