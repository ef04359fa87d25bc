"""`python -m replica --config PATH --replica-id ID ...`: see `replica._cli`."""

from replica._cli import run_replica

if __name__ == "__main__":
    raise SystemExit(run_replica())
