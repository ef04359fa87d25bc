"""The deployment sees the request's id; the answer carries it back."""

from collections.abc import AsyncIterator

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from replica import get_request_id
from replica.server import ReplicaServer


class Deployment:
    async def __call__(self, request: web.Request) -> dict[str, str]:
        return {"request_id": get_request_id()}


@pytest.fixture
async def client() -> AsyncIterator[TestClient]:  # type: ignore[type-arg]
    server = ReplicaServer(Deployment(), replica_id="r", drain_quiet_s=0.01)
    client = TestClient(TestServer(server.app))
    await client.start_server()
    yield client
    await client.close()


async def test_the_deployment_sees_the_request_id_and_the_answer_returns_it(
    client: TestClient,  # type: ignore[type-arg]
) -> None:
    async with client.get("/", headers={"x-request-id": "abc.123"}) as resp:
        assert (await resp.json())["request_id"] == "abc.123"
        assert resp.headers["x-request-id"] == "abc.123"
    async with client.get("/", headers={"x-request-id": "bad id\tx"}) as resp:
        made_up = (await resp.json())["request_id"]
        assert made_up != "bad id\tx"
        assert resp.headers["x-request-id"] == made_up
    assert get_request_id() == ""  # outside a request
