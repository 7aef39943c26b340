"""The API key, masked wherever a server's reply or an error text would carry it.

The client hands nothing on that a server said without passing it here:
an API that quotes the key (an error message, a redirect to ``?key=...``,
a stream's error event) cannot put it in the store, a log or an export.
Only spellings of exactly the key are touched, so a reply without it
stays byte for byte what the server sent.
"""

from __future__ import annotations

import functools
import re
from typing import Any

import orjson

#: What stands in for the key wherever a text or a reply would have held it.
KEY_MASK = "[key]"
#: Keys shorter than this are not masked (see :func:`mask_key`); Poe's are far longer.
MIN_SECRET_LEN = 12


@functools.lru_cache(maxsize=8)
def _key_pattern(key: str) -> re.Pattern[str]:
    """Every spelling of ``key`` a reply or an error text could carry.

    Each character may come as it is, percent-encoded (hex in either case,
    ``+`` for a space), or escaped as JSON or a Python repr escapes it (a
    server quoting a header, a URL normalised on the way). Only a spelling
    of exactly this key matches: a text without it is never touched.
    """
    def one(c: str) -> str:
        forms = {c, repr(c)[1:-1], ascii(c)[1:-1], repr(c.encode())[2:-1], orjson.dumps(c).decode()[1:-1]}
        if c in "\"'\\/":
            forms.add("\\" + c)
        if c == " ":
            forms.add("+")
        hexes = (f"{b:02X}" for b in c.encode())
        percent = "".join("%" + "".join(f"[{d}{d.lower()}]" if d.isalpha() else d for d in h) for h in hexes)
        return "(?:" + "|".join([percent, *(re.escape(f) for f in sorted(forms, key=len, reverse=True))]) + ")"
    return re.compile("".join(one(c) for c in key))


def mask_key(text: str, key: str) -> str:
    """``text`` with every spelling of ``key`` in it (see :func:`_key_pattern`) as :data:`KEY_MASK`.

    A key shorter than :data:`MIN_SECRET_LEN` (a local server's placeholder,
    ``anything``) is no secret, and looking for it would rewrite ordinary
    words of answers: it is left alone.
    """
    return _key_pattern(key).sub(KEY_MASK, text) if len(key) >= MIN_SECRET_LEN and text else text


def masked_json(value: Any, key: str) -> Any:
    """``value`` (parsed JSON) with the key masked in every string value.

    Order and every other value stay as they were, so an answer without the
    key serialises to the same bytes as before.
    """
    if isinstance(value, str):
        return mask_key(value, key)
    if isinstance(value, dict):
        return {k: masked_json(v, key) for k, v in value.items()}  # the names are the API's, not the server's echo
    if isinstance(value, list):
        return [masked_json(v, key) for v in value]
    return value
