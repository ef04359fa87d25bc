"""Serve an example deployment in-process the way a replica does. Test scaffolding only.

The handler opens `request_context` with the header's model id, awaits the deployment and turns
its return value into a response (dict/list -> JSON, str -> text, bytes -> octet-stream, an
async iterator -> a chunked stream, any other exception -> 500 JSON), so a test goes through
real HTTP parsing of the example without starting a replica process.
"""

from collections.abc import AsyncIterator, Awaitable, Callable

from aiohttp import web
from aiohttp.test_utils import TestClient

from replica import request_context

Deployment = Callable[[web.Request], Awaitable[object]]
Client = TestClient[web.Request, web.Application]
Serve = Callable[[Deployment], Awaitable[Client]]

MODEL_ID_HEADER = "serve_multiplexed_model_id"


async def _respond(request: web.Request, result: object) -> web.StreamResponse:
    if isinstance(result, web.StreamResponse):
        return result
    if isinstance(result, dict | list):
        return web.json_response(result)
    if isinstance(result, str):
        return web.Response(text=result)
    if isinstance(result, bytes):
        return web.Response(body=result, content_type="application/octet-stream")
    if isinstance(result, AsyncIterator):
        response = web.StreamResponse()
        await response.prepare(request)
        async for chunk in result:
            await response.write(chunk.encode() if isinstance(chunk, str) else chunk)
        await response.write_eof()
        return response
    raise TypeError(f"the deployment returned {type(result).__name__}")


def deployment_app(deployment: Deployment) -> web.Application:
    async def handler(request: web.Request) -> web.StreamResponse:
        with request_context(request.headers.get(MODEL_ID_HEADER, "")):
            try:
                return await _respond(request, await deployment(request))
            except web.HTTPException:
                raise
            except Exception as error:
                return web.json_response(
                    {"error": {"code": "deployment_error", "message": str(error)}}, status=500
                )

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handler)
    return app
