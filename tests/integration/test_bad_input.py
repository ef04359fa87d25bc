"""Bad input at the router's public port, with real processes: each gets a JSON error, nothing
is lost, and other clients are served meanwhile."""

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from urllib.parse import urlsplit

import aiohttp

from router.launch import LocalCluster

MODEL = "serve_multiplexed_model_id"
LIMIT = 64 * 1024


def address(cluster: LocalCluster) -> tuple[str, int]:
    parts = urlsplit(cluster.url)
    assert parts.hostname is not None
    assert parts.port is not None
    return parts.hostname, parts.port


async def answer(reader: asyncio.StreamReader) -> tuple[int, dict[str, object]]:
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 30)
    length = next(
        int(line.split(b":", 1)[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    )
    body = await asyncio.wait_for(reader.readexactly(length), 30)
    return int(head.split(b" ", 2)[1]), json.loads(body)


async def test_bodies_over_the_limit_get_413_whether_announced_or_streamed(
    start_cluster: Callable[..., LocalCluster],
) -> None:
    cluster = start_cluster(num_replicas=1, router={"max_request_body_bytes": LIMIT})

    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(40):
            yield b"x" * 4096  # 160 KiB in all, sent chunked with no length given

    async with aiohttp.ClientSession() as session:
        url = cluster.url + "/?echo=1"
        async with session.post(url, headers={MODEL: "m"}, data=b"x" * (LIMIT + 1)) as r:
            assert r.status == 413
            assert (await r.json())["error"]["code"] == "body_too_large"
        async with session.post(url, headers={MODEL: "m"}, data=chunks()) as r:
            assert r.status == 413
            assert (await r.json())["error"]["code"] == "body_too_large"
        async with session.post(url, headers={MODEL: "m"}, data=b"y" * LIMIT) as r:
            assert r.status == 200  # at the limit: served, whole
            assert await r.read() == b"y" * LIMIT


async def test_oversized_heads_get_431_and_a_trickling_client_is_cut_off(
    start_cluster: Callable[..., LocalCluster],
) -> None:
    cluster = start_cluster(num_replicas=1, router={"header_timeout_s": 2.0})
    host, port = address(cluster)
    many = b"".join(b"X-%d: v\r\n" % n for n in range(101))
    for head, code in (
        (many, "too_many_headers"),
        (b"X-Big: " + b"v" * 9000 + b"\r\n", "header_too_large"),
    ):
        reader, writer = await asyncio.open_connection(host, port)
        writer.write(b"GET / HTTP/1.1\r\nHost: r\r\n" + head + b"\r\n")
        status, body = await answer(reader)
        assert (status, body["error"]["code"]) == (431, code)  # type: ignore[index]
        writer.close()

    reader, writer = await asyncio.open_connection(host, port)

    async def trickle() -> None:  # one byte a second, as the slowloris attack does
        for byte in b"GET / HTTP/1.1\r\nHost: r\r\nX-Slow: " + b"a" * 60:
            if writer.is_closing():
                return
            writer.write(bytes([byte]))
            await asyncio.sleep(1.0)

    trickling = asyncio.create_task(trickle())
    async with aiohttp.ClientSession() as session:
        for n in range(30):  # a normal client, meanwhile: every request served
            async with session.get(cluster.url + "/", headers={MODEL: f"m{n % 3}"}) as r:
                assert r.status == 200
            await asyncio.sleep(0.05)
    status, body = await answer(reader)
    assert (status, body["error"]["code"]) == (408, "header_timeout")  # type: ignore[index]
    assert not trickling.done()  # cut off at the deadline, long before its head was done
    trickling.cancel()
    writer.close()
