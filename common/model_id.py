"""Model ids: how a request names its model, and which names are acceptable.

The router reads the id from a request header and a replica reads it again from the forwarded
request; both must accept exactly the same ids, so the rules live here and nowhere else.

Invariants:
- A valid model id is valid UTF-8, at most `MAX_MODEL_ID_BYTES` bytes when encoded, and holds
  no control character (Unicode category Cc: U+0000-U+001F, U+007F-U+009F).
- A valid id is returned exactly as given: no stripping, no case folding, no normalisation.
- The empty string is a valid id and means "no model".
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping

__all__ = [
    "MAX_MODEL_ID_BYTES",
    "MODEL_ID_HEADERS",
    "InvalidModelId",
    "model_id_from_headers",
    "validate_model_id",
]

MODEL_ID_HEADERS: tuple[str, ...] = ("serve_multiplexed_model_id", "serve-multiplexed-model-id")
MAX_MODEL_ID_BYTES = 256

# Exactly the code points of Unicode category Cc (C0 controls, DEL, C1 controls).
_CONTROL_CHARACTER = re.compile("[\x00-\x1f\x7f-\x9f]")


class InvalidModelId(ValueError):
    """A model id breaks the rules; the message is meant for the user who sent it."""


def validate_model_id(raw: str) -> str:
    """Return `raw` unchanged if it is a valid model id, else raise `InvalidModelId`.

    Header values that were not valid UTF-8 reach us as lone surrogates (aiohttp decodes header
    bytes with `surrogateescape`), so they fail the UTF-8 rule here.
    """
    try:
        size = len(raw.encode("utf-8"))
    except UnicodeEncodeError:
        raise InvalidModelId("model id is not valid UTF-8") from None
    if size > MAX_MODEL_ID_BYTES:
        raise InvalidModelId(f"model id is {size} bytes; the limit is {MAX_MODEL_ID_BYTES}")
    control = _CONTROL_CHARACTER.search(raw)
    if control is not None:
        raise InvalidModelId(
            f"model id contains the control character U+{ord(control.group()):04X} "
            f"at position {control.start()}"
        )
    return raw


def model_id_from_headers(headers: Mapping[str, str]) -> str:
    """Return the validated model id a request's headers name, or "" when they name none.

    `headers` is normally case-insensitive (aiohttp's `CIMultiDictProxy`); a plain dict works
    when its keys are spelled as in `MODEL_ID_HEADERS`. Either spelling may be used, and a
    header may be repeated, but every value given must be the same id.
    """
    values: set[str] = set()
    for name in MODEL_ID_HEADERS:
        values.update(_header_values(headers, name))
    if not values:
        return ""
    if len(values) > 1:
        raise InvalidModelId("the request names more than one model id in its headers")
    return validate_model_id(values.pop())


def _header_values(headers: Mapping[str, str], name: str) -> Iterable[str]:
    getall: Callable[[str, tuple[()]], Iterable[str]] | None = getattr(headers, "getall", None)
    if getall is not None:
        return getall(name, ())
    value = headers.get(name)
    return () if value is None else (value,)
