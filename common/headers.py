"""HTTP header names the router and the replicas agree on (besides the model id's)."""

from __future__ import annotations

__all__ = [
    "CACHE_HEADER",
    "COLD_HEADER",
    "CREDENTIAL_HEADER",
    "DEMAND_HEADER",
    "EVICT_HEADER",
    "INTERNAL_PREFIX",
    "LOAD_FAILED_HEADER",
    "REPLICA_HEADER",
]

REPLICA_HEADER = "x-modelplex-replica"  # which replica answered (set on every answer)
COLD_HEADER = "x-modelplex-cold"  # "1" when the request waited for a model load
EVICT_HEADER = "x-modelplex-evict"  # router -> replica: the model to give up for this one
DEMAND_HEADER = "x-modelplex-demand"  # router -> replica: its count of the model's requests
CACHE_HEADER = "x-modelplex-cache"  # -> replica /-/load: the loader whose cache loads the model
CREDENTIAL_HEADER = "x-modelplex-authorization"  # router -> replica: Bearer data_path_token
LOAD_FAILED_HEADER = "x-modelplex-load-failed"  # replica -> router: this model's load failed
INTERNAL_PREFIX = "x-modelplex-"  # every header above; a client's are dropped by the router
