"""The OpenAI-style example through the router: routed by the body's "model", a streamed
completion arriving token by token, and the model list."""

import itertools
import json
import time
from collections.abc import Callable
from pathlib import Path

import aiohttp

from router.launch import LocalCluster


async def test_completions_are_routed_by_model_and_stream_token_by_token(
    start_cluster: Callable[..., LocalCluster], tmp_path: Path
) -> None:
    cluster = start_cluster(
        num_replicas=2,
        router={"model_id_from": "json_body"},
        init_kwargs={"model_dir": str(tmp_path / "adapters"), "token_interval_s": 0.05},
        import_path="examples.adapters:Adapters",
    )
    async with aiohttp.ClientSession() as session:
        async with session.get(cluster.url + "/v1/models") as r:
            listed = [m["id"] for m in (await r.json())["data"]]
        assert listed == [f"adapter-{n:02d}" for n in range(1, 9)]

        replicas = set()
        for _ in range(3):
            request = {"model": "adapter-03", "prompt": "hello", "max_tokens": 4}
            async with session.post(cluster.url + "/v1/completions", json=request) as r:
                assert r.status == 200
                answer = await r.json()
                replicas.add(r.headers["x-modelplex-replica"])
        assert answer["model"] == "adapter-03"
        assert len(answer["choices"][0]["text"].split()) == 4
        assert len(replicas) == 1  # every request for the adapter went where it is loaded

        chat = {
            "model": "adapter-05",
            "messages": [{"role": "user", "content": "hi"}],
            "max_tokens": 6,
            "stream": True,
        }
        arrivals: list[float] = []
        events: list[str] = []
        async with session.post(cluster.url + "/v1/chat/completions", json=chat) as r:
            assert r.status == 200
            assert r.headers["Content-Type"].startswith("text/event-stream")
            async for line in r.content:
                if line.startswith(b"data: "):
                    arrivals.append(time.monotonic())
                    events.append(line[6:].decode().strip())
    assert events[-1] == "[DONE]"
    tokens = [json.loads(e)["choices"][0]["delta"]["content"] for e in events[:-1]]
    assert len(tokens) == 6
    assert all(json.loads(e)["model"] == "adapter-05" for e in events[:-1])
    gaps = [later - earlier for earlier, later in itertools.pairwise(arrivals)]
    assert sum(1 for gap in gaps if gap > 0.02) >= 4  # they arrived one by one, not at the end
