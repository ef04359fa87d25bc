"""Example deployments a replica can host, each named by its import path in the config.

- `examples.tenants:TenantModels`: per-tenant linear models read from JSON files; the default
  that `scripts/up` serves.
- `examples.synthetic:SyntheticModels`: fake models with knobs (load time, failures, crashes,
  hangs, streaming) for the tests and the benchmark.
"""
