"""Turn what a deployment returned into an HTTP answer, and errors into JSON answers.

Return values: dict or list -> JSON; str -> text/plain; bytes-like -> application/octet-stream;
a `web.StreamResponse` -> itself; None -> 204; an async iterable -> a streamed (chunked) body,
each item (str as UTF-8, or bytes) written as soon as it is produced.

A stream is pulled inside the caller's request context, so the request keeps its model pinned
until the last chunk is sent or the client goes away. Its first item is pulled before the
headers go out: a failure there is still an ordinary error answer, and the headers already know
whether the request waited for a model load. A failure after the headers went out can no longer
be an error answer; the connection is cut instead, so the client sees a truncated body, never
a complete-looking one.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterable, AsyncIterator, Callable
from typing import Any

from aiohttp import web

__all__ = ["UnsupportedResult", "respond"]

logger = logging.getLogger("modelplex.replica")

Stamp = Callable[[web.StreamResponse], None]
"""Adds the replica's headers to an answer before it is sent."""

_TEXT_STREAM = "text/plain; charset=utf-8"
_BINARY_STREAM = "application/octet-stream"


class UnsupportedResult(TypeError):
    """The deployment returned something that has no HTTP meaning."""


async def respond(request: web.Request, result: object, stamp: Stamp) -> web.StreamResponse:
    """The answer for `result`; a stream is sent completely before this returns."""
    response: web.StreamResponse
    if isinstance(result, web.StreamResponse):
        if result.prepared:
            return result
        response = result
    elif isinstance(result, dict | list):
        response = web.json_response(result)
    elif isinstance(result, str):
        response = web.Response(text=result)
    elif isinstance(result, bytes | bytearray | memoryview):
        response = web.Response(body=result, content_type=_BINARY_STREAM)
    elif result is None:
        response = web.Response(status=204)
    elif isinstance(result, AsyncIterable):
        return await _stream(request, result, stamp)
    else:
        raise UnsupportedResult(
            f"the deployment returned {type(result).__name__}; expected dict, list, str, bytes, "
            "None, an aiohttp response or an async iterator of str or bytes"
        )
    stamp(response)
    return response


def _chunk(item: object) -> bytes:
    if isinstance(item, str):
        return item.encode("utf-8")
    if isinstance(item, bytes | bytearray | memoryview):
        return bytes(item)
    raise UnsupportedResult(
        f"a streamed deployment yielded {type(item).__name__}; expected str or bytes"
    )


async def _close(iterator: AsyncIterator[Any]) -> None:
    aclose = getattr(iterator, "aclose", None)
    if aclose is None:
        return
    try:
        await aclose()
    except Exception:
        logger.exception("closing the deployment's stream failed")


async def _stream(
    request: web.Request, result: AsyncIterable[Any], stamp: Stamp
) -> web.StreamResponse:
    iterator = aiter(result)
    try:
        first = await anext(iterator)
        first_chunk: bytes | None = _chunk(first)
    except StopAsyncIteration:
        first, first_chunk = None, None
    except BaseException:
        await _close(iterator)
        raise
    response = web.StreamResponse()
    response.content_type = _TEXT_STREAM if isinstance(first, str) else _BINARY_STREAM
    stamp(response)
    try:
        await response.prepare(request)
        if first_chunk is not None:
            await response.write(first_chunk)
            async for item in iterator:
                await response.write(_chunk(item))
        await response.write_eof()
    except ConnectionError:
        logger.debug("client went away during a streamed response to %s", request.path)
    except Exception:
        logger.exception("streamed response to %s failed after it started", request.path)
        if request.transport is not None:
            request.transport.close()
    finally:
        await _close(iterator)
    return response
