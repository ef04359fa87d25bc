from router.load_failures import LoadFailures

ALL = frozenset({"r1", "r2", "r3", "r4"})


def test_a_failure_keeps_the_model_off_that_replica_for_the_cooldown() -> None:
    failures = LoadFailures(cooldown_s=30.0, max_failures=3)
    failures.record("m", "r1", "OSError: no such file", at=100.0)
    assert failures.failed_on("m", now=129.9) == {"r1"}
    assert failures.failed_on("other", now=129.9) == frozenset()
    assert failures.exhausted("m", now=110.0, routable=ALL) is None  # other replicas may load it
    assert failures.failed_on("m", now=130.0) == frozenset()  # expired
    assert not failures


def test_enough_replicas_failing_refuses_the_model_with_the_latest_message() -> None:
    failures = LoadFailures(cooldown_s=30.0, max_failures=3)
    failures.record("m", "r1", "first", at=100.0)
    failures.record("m", "r2", "second", at=101.0)
    assert failures.exhausted("m", now=102.0, routable=ALL) is None
    failures.record("m", "r3", "third", at=102.0)
    assert failures.exhausted("m", now=103.0, routable=ALL) == "third"
    assert failures.retry_after_s("m", now=103.0) == 27.0  # when r1's record expires
    assert failures.exhausted("m", now=130.5, routable=ALL) is None  # r1's expired: try again


def test_failing_on_every_routable_replica_is_enough_and_no_replica_is_not() -> None:
    failures = LoadFailures(cooldown_s=30.0, max_failures=3)
    failures.record("m", "r1", "boom", at=0.0)
    assert failures.exhausted("m", now=1.0, routable={"r1"}) == "boom"
    assert failures.exhausted("m", now=1.0, routable=set()) is None  # that is "no replica"


def test_a_load_that_succeeds_or_a_restarted_replica_clears_its_record() -> None:
    failures = LoadFailures()
    failures.record("m", "r1", "boom", at=0.0)
    failures.record("m", "r2", "boom", at=0.0)
    failures.record("n", "r1", "boom", at=0.0)
    failures.loaded("m", "r1")
    assert failures.failed_on("m", now=1.0) == {"r2"}
    failures.forget_replica("r1")
    assert failures.failed_on("n", now=1.0) == frozenset()
    assert [(r.model_id, r.replica_id) for r in failures.records(now=1.0)] == [("m", "r2")]


def test_an_older_report_of_a_failure_does_not_replace_a_newer_one() -> None:
    failures = LoadFailures(cooldown_s=30.0)
    failures.record("m", "r1", "new", at=50.0)
    failures.record("m", "r1", "old", at=10.0)
    assert [r.message for r in failures.records(now=51.0)] == ["new"]
