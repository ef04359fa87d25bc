"""The launcher: a program of its own beside the router, not part of the request path.

`modelplex up` reads a cluster config, starts its routers (`router.count`, sharing one port)
and N replicas as child processes, restarts the ones that crash and reconciles to an edited
config; `modelplex apply` and `modelplex status` talk to it. Nothing here imports the router's
request path (`router.server`, `router.view`, `router.policy`, ...) or the replica: the
children are separate processes.

Rooms: `_cli` the `modelplex` command (`_status_cli` and `_admin_cli` its `status` and admin
verbs), `_launcher` the glue of `modelplex up`, `_plan` the reconcile decisions, `_replica_set`
the replicas and the reconcile, `_router_set` the routers, `_supervisor` one child process,
`_backoff` when a crashed child restarts, `_control` the runtime directory and the control
port, `_text` what is printed; `_local_cluster` the cluster that tests and benchmarks start
(one or more routers and N replicas, no launcher; `_child_process` its processes and its poll),
shipped so no suite copies it.
"""

from router.launch._child_process import ChildProcess, ClusterFailed, wait_for
from router.launch._cli import main
from router.launch._launcher import Launcher, run_launcher
from router.launch._local_cluster import LocalCluster, ReplicaPlacement

__all__ = [
    "ChildProcess",
    "ClusterFailed",
    "Launcher",
    "LocalCluster",
    "ReplicaPlacement",
    "main",
    "run_launcher",
    "wait_for",
]
