"""Shared fixtures: every test starts with a clean replica runtime."""

from collections.abc import Iterator

import pytest

from replica._runtime import runtime


@pytest.fixture(autouse=True)
def _clean_replica_runtime() -> Iterator[None]:
    runtime.reset()
    yield
    runtime.reset()
