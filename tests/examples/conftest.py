"""Fixtures for the example deployments: `serve` runs one behind a real HTTP test server."""

from collections.abc import AsyncIterator

import pytest
from aiohttp.test_utils import TestClient, TestServer
from deployment_server import Client, Deployment, Serve, deployment_app


@pytest.fixture
async def serve() -> AsyncIterator[Serve]:
    """Start a test server around a deployment; every server stops when the test ends."""
    clients: list[Client] = []

    async def start(deployment: Deployment) -> Client:
        client = TestClient(TestServer(deployment_app(deployment)))
        await client.start_server()
        clients.append(client)
        return client

    yield start
    for client in clients:
        await client.close()
