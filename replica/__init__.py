"""modelplex replica: host a deployment whose models are multiplexed in an LRU cache.

A deployment written for Ray Serve changes one import line:

    from replica import multiplexed, get_multiplexed_model_id
"""

from replica._cache import CacheClosed, ModelSlotTimeout
from replica._context import get_multiplexed_model_id, get_request_id, request_context
from replica._multiplex import MultiplexedLoader, multiplexed

__all__ = [
    "CacheClosed",
    "ModelSlotTimeout",
    "MultiplexedLoader",
    "get_multiplexed_model_id",
    "get_request_id",
    "multiplexed",
    "request_context",
]
