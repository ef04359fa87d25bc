"""The placement simulator (`scripts/simulate`): the router's real view and policies on
simulated replicas and synthetic time, next to baselines and the offline Belady bound.

Modules: `workloads` (request sequences), `replica_model` (a replica's cache on simulated
time), `engine` (events, admission, statistics), `baselines` (random, round robin, consistent
hashing, Ray Serve's router), `contract` (optional hooks a simulated policy may offer),
`belady` (the offline optimum), `runner` (scenarios and sweeps), `report` and `plots`
(output), `presets` (the acceptance scenarios), `__main__` (the command line).
"""

from router.simulation.belady import belady_misses
from router.simulation.engine import EngineConfig, RunStats, simulate
from router.simulation.runner import POLICY_NAMES, Scenario, make_policy, run
from router.simulation.workloads import Arrival, Dist, DistKind, Popularity, WorkloadSpec, generate

__all__ = [
    "POLICY_NAMES",
    "Arrival",
    "Dist",
    "DistKind",
    "EngineConfig",
    "Popularity",
    "RunStats",
    "Scenario",
    "WorkloadSpec",
    "belady_misses",
    "generate",
    "make_policy",
    "run",
    "simulate",
]
