"""Finding the model id in a JSON body's top-level `"model"` field without parsing it all.

OpenAI-style APIs name the model in the body. The router reads only as much of the body as it
takes to find the field (`MAX_PEEK_BYTES` at most) and forwards the bytes it read, then the
rest, untouched. `ModelField` is an incremental scanner: feed it chunks; it answers with the
value as soon as the top-level `"model"` string is complete, `MISSING` once the top-level object
ended without one, or keeps asking for more. Pure: no I/O.

It keeps JSON's rules for what it walks through (strings with escapes, nesting), so a
`"model"` key inside a nested object or inside a string is never taken for the top-level one.
"""

from __future__ import annotations

import enum
import json

__all__ = ["MAX_PEEK_BYTES", "BodyModel", "ModelField"]

MAX_PEEK_BYTES = 64 * 1024


class BodyModel(enum.Enum):
    NEED_MORE = "need_more"
    MISSING = "missing"  # the top-level object has no string "model" field
    NOT_JSON = "not_json"  # the body is not a JSON object


class ModelField:
    def __init__(self) -> None:
        self._buffer = bytearray()
        self._pos = 0
        self._depth = 0
        self._in_string = False
        self._escaped = False
        self._string_start = 0
        self._expect_key = False  # at depth 1, the next string is a key
        self._last_key: bytes | None = None
        self._after_colon = False  # a value of `_last_key` at depth 1 comes next
        self._started = False

    @property
    def seen(self) -> int:
        return len(self._buffer)

    def feed(self, chunk: bytes) -> str | BodyModel:
        """Scan `chunk`; the model id once found, else what is known so far."""
        self._buffer += chunk
        data = self._buffer
        i = self._pos
        end = len(data)
        while i < end:
            c = data[i]
            if self._in_string:
                if self._escaped:
                    self._escaped = False
                elif c == 0x5C:  # backslash
                    self._escaped = True
                elif c == 0x22:  # closing quote
                    self._in_string = False
                    found = self._string_done(bytes(data[self._string_start : i + 1]))
                    if found is not None:
                        self._pos = i + 1
                        return found
                i += 1
                continue
            if c in b" \t\r\n":
                i += 1
                continue
            if not self._started:
                if c != 0x7B:  # the body must be an object
                    return BodyModel.NOT_JSON
                self._started = True
                self._depth = 1
                self._expect_key = True
                i += 1
                continue
            if c == 0x22:
                self._in_string = True
                self._string_start = i
            elif c in b"{[":
                self._depth += 1
                self._after_colon = False
            elif c in b"}]":
                self._depth -= 1
                if self._depth == 0:
                    return BodyModel.MISSING
            elif c == 0x3A and self._depth == 1:  # colon
                self._after_colon = True
            elif c == 0x2C and self._depth == 1:  # comma
                self._expect_key = True
                self._after_colon = False
                self._last_key = None
            elif self._depth == 1 and self._after_colon:
                self._after_colon = False  # a number, true, false or null: not a string id
            i += 1
        self._pos = i
        return BodyModel.NEED_MORE

    def _string_done(self, literal: bytes) -> str | BodyModel | None:
        if self._depth != 1:
            return None
        if self._expect_key:
            self._expect_key = False
            self._last_key = literal
            return None
        if self._after_colon:
            self._after_colon = False
            if self._last_key == b'"model"' or (
                self._last_key is not None and _decode(self._last_key) == "model"
            ):
                value = _decode(literal)
                return value if value is not None else BodyModel.NOT_JSON
        return None


def _decode(literal: bytes) -> str | None:
    try:
        value = json.loads(literal)
    except (ValueError, UnicodeDecodeError):
        return None
    return value if isinstance(value, str) else None
