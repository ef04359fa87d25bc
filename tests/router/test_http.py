from aiohttp.test_utils import make_mocked_request
from multidict import CIMultiDict

from router._http import request_headers


def test_a_clients_internal_and_hop_by_hop_headers_never_reach_a_replica() -> None:
    headers = CIMultiDict(
        {
            "serve_multiplexed_model_id": "m",
            "X-Modelplex-Evict": "someone-elses-model",
            "x-modelplex-replica": "forged",
            "Connection": "keep-alive, X-Drop-Me",
            "X-Drop-Me": "1",
            "Authorization": "Bearer the-users-own",
            "Expect": "100-continue",
            "X-Kept": "yes",
        }
    )
    forwarded = request_headers(make_mocked_request("POST", "/", headers=headers))
    names = {name.lower() for name in forwarded} - {"x-forwarded-for"}  # added when known
    assert names == {"serve_multiplexed_model_id", "authorization", "x-kept"}
    assert forwarded["Authorization"] == "Bearer the-users-own"
