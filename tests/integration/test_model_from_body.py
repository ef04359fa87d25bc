"""OpenAI-style routing: the model id in the JSON body's "model" field, found without buffering
the body, which reaches the replica byte for byte."""

import io
from collections.abc import AsyncIterator, Callable

import aiohttp

from router.launch import LocalCluster

BIG = 100 * 1024 * 1024


def rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        line = next(line for line in status if line.startswith("VmRSS:"))
    return int(line.split()[1])


async def test_the_model_field_routes_and_the_body_is_forwarded_untouched(
    start_cluster: Callable[..., LocalCluster],
) -> None:
    cluster = start_cluster(
        num_replicas=2,
        router={"model_id_from": "json_body", "max_request_body_bytes": 2 * BIG},
    )
    assert cluster.router is not None
    body = b'{"prompt": "hello", "model": "lora-a", "pad": "' + b"x" * (5 * 1024 * 1024) + b'"}'
    async with aiohttp.ClientSession() as session:
        async with session.post(cluster.url + "/v1/completions?echo=1", data=io.BytesIO(body)) as r:
            assert r.status == 200
            assert await r.read() == body  # streamed after the peek, byte for byte
            holder = r.headers["x-modelplex-replica"]
        models = {
            r["replica_id"]: [m["model_id"] for m in r["models"]]
            for r in cluster.status()["replicas"]
        }
        assert models[holder] == ["lora-a"]

        async with session.post(cluster.url + "/", data=b'{"prompt": "no model here"}') as r:
            assert r.status == 400
            assert (await r.json())["error"]["code"] == "invalid_model_id"

        before = rss_kb(cluster.router.pid)

        async def huge() -> AsyncIterator[bytes]:
            yield b'{"model": "lora-b", "pad": "'
            chunk = b"y" * (1024 * 1024)
            for _ in range(BIG // len(chunk)):
                yield chunk
            yield b'"}'

        async with session.post(cluster.url + "/", data=huge()) as r:
            assert r.status == 200
            answer = await r.json()
        assert answer["model"] == "lora-b"
        assert answer["body_bytes"] == BIG + len(b'{"model": "lora-b", "pad": "') + 2
        grown_kb = rss_kb(cluster.router.pid) - before
        print(f"router RSS grew {grown_kb} kB for a {BIG >> 20} MiB body")
        assert grown_kb < 32 * 1024  # far below the body's size: it was never held whole
