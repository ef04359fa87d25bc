import math

from router.launch._watch import Sample, parse_duration_buckets, rates_line

PAGE = """\
# TYPE modelplex_router_request_duration_seconds histogram
modelplex_router_request_duration_seconds_bucket{le="0.01"} 90.0
modelplex_router_request_duration_seconds_bucket{le="0.1"} 99.0
modelplex_router_request_duration_seconds_bucket{le="1.0"} 100.0
modelplex_router_request_duration_seconds_bucket{le="+Inf"} 100.0
modelplex_router_request_duration_seconds_count 100.0
modelplex_router_request_duration_seconds_sum 2.0
"""


def test_the_histogram_buckets_are_read_from_the_metrics_page() -> None:
    buckets = parse_duration_buckets(PAGE)
    assert buckets == {0.01: 90.0, 0.1: 99.0, 1.0: 100.0, math.inf: 100.0}


def test_rates_between_two_looks() -> None:
    before = Sample(at=0.0, counters={"requests": 100, "cold_dispatches": 10, "prefetches": 0})
    after = Sample(
        at=10.0,
        counters={"requests": 200, "cold_dispatches": 20, "prefetches": 2},
        buckets=parse_duration_buckets(PAGE),
    )
    line = rates_line(before, after)
    assert "10.0 req/s" in line
    assert "72.0 loads/min" in line  # 12 loads in 10 s
    assert "hit ratio 90.0%" in line
    assert "p99 <= 100 ms" in line


def test_a_restarted_router_counts_afresh_and_no_requests_shows_dashes() -> None:
    before = Sample(at=0.0, counters={"requests": 500})
    after = Sample(at=2.0, counters={"requests": 4})
    assert "2.0 req/s" in rates_line(before, after)
    idle = rates_line(Sample(at=0.0), Sample(at=1.0))
    assert "hit ratio -" in idle
    assert "p99 -" in idle
