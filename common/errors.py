"""The JSON error body every modelplex answer uses: {"error": {"code": ..., "message": ...}}.

Codes are stable identifiers clients may branch on; messages are for people.
"""

from __future__ import annotations

import json

__all__ = ["error_body"]


def error_body(code: str, message: str) -> bytes:
    return json.dumps({"error": {"code": code, "message": message}}).encode()
