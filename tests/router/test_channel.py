"""The router's end of the state channel, over real WebSockets to a router app in this process."""

from collections.abc import AsyncIterator

import pytest
from aiohttp.test_utils import TestClient, TestServer

from common.auth import authorization_value
from common.config import parse_config
from common.wire import CHANNEL_PATH, encode_snapshot
from router.server import RouterServer
from router.view import ReplicaStatus

from polling import until
from reports import snapshot

SECRET = "channel-secret"
AUTH = {"Authorization": authorization_value(SECRET)}


@pytest.fixture
async def router() -> AsyncIterator[tuple[RouterServer, TestClient]]:
    config = parse_config({"deployment": {"import_path": "examples.synthetic:SyntheticModels"}})
    server = RouterServer(config, SECRET)
    client = TestClient(TestServer(server.app()))
    await client.start_server()
    yield server, client
    await client.close()


async def test_a_replica_that_reconnects_stays_up_when_its_old_channel_closes_late(
    router: tuple[RouterServer, TestClient],
) -> None:
    server, client = router
    old = await client.ws_connect(CHANNEL_PATH, headers=AUTH)
    await old.send_bytes(encode_snapshot(snapshot("r1", ["a"], sequence=1)))
    await until(lambda: "r1" in server.view.replicas, "the first report")
    new = await client.ws_connect(CHANNEL_PATH, headers=AUTH)
    await new.send_bytes(encode_snapshot(snapshot("r1", ["a"], sequence=2)))
    await until(lambda: server.view.replicas["r1"].sequence == 2, "the report on the new channel")
    await old.close()  # the dead channel is noticed only now, after the new one is up
    await until(lambda: len(server.reports._open) == 1, "the router to see the old one close")
    assert server.view.replicas["r1"].status is ReplicaStatus.HEALTHY
    assert server.view.holders == {"a": {"r1"}}
    await new.close()
    await until(lambda: server.view.replicas["r1"].status is ReplicaStatus.DOWN, "the last close")
