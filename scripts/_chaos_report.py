"""The chaos benchmark's figures: outcomes, faults and samples in, a JSON document and a table
out. Pure: no I/O, no clock.

Counting rules (also printed under the table):
- A request counts when it started in the measured window (after the warm-up); every such
  request ends as exactly one outcome: succeeded, failed (by kind) or, for a `fail-load-*` id,
  an expected failure (by kind; a fail-load request that succeeded is counted as
  `unexpected_success`, a failure of its own).
- Attribution to a fault: a failure belongs to the first fault whose window — from its
  injection to its end (recovered) plus `grace_s` — holds the failure's end; failures outside
  every window are "unattributed" (nothing injected explains them).
- In flight at a replica kill or stop: a request that started before the signal and ended after
  it. Of those, a success names its replica (`x-modelplex-replica`); a failure cannot say where
  it ran, so every failure in flight at the signal is counted against that fault. A success
  "on the target" of a kill was already on its way to the client at the signal, or was sent to
  the restarted replica.
- Router counters (`retries`, ...) reset when the router restarts: the sampler keeps, per router
  lifetime (its `started_at`), the largest value seen, and the figures are their sums. Counts
  made in a lifetime's last second before a kill -9 are lost.
- Router RSS and fds: `start` is the first router after the warm-up, `end` the router running
  at the end (another process if it was restarted), `max` the largest sample of any of them.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from typing import Any

from _chaos_cluster import ProcessSample
from _chaos_faults import Fault
from _chaos_load import Outcome

REPLICA_FAULTS = ("kill_replica", "stop_replica")


def _percentile_ms(values: Sequence[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000, 1)


def summarize(
    outcomes: Sequence[Outcome],
    faults: Sequence[Fault],
    *,
    measured_from: float,
    duration_s: float,
    lifetimes: Mapping[float, Mapping[str, int]],
    samples: Sequence[ProcessSample],
    notes: Sequence[str] = (),
    config: Mapping[str, Any] | None = None,
    grace_s: float = 1.0,
) -> dict[str, Any]:
    """The run's figures as a JSON-ready document; see the module docstring for the rules."""
    measured = [o for o in outcomes if o.start >= measured_from]
    failed: Counter[str] = Counter()
    expected: Counter[str] = Counter()
    idempotent: Counter[str] = Counter()
    by_shape: dict[str, Counter[str]] = {}
    for o in measured:
        shape = by_shape.setdefault(o.shape, Counter())
        shape["sent"] += 1
        if o.expected:
            if o.ok:
                failed["unexpected_success"] += 1
            else:
                expected[o.kind] += 1
            continue
        if o.ok:
            shape["succeeded"] += 1
            continue
        failed[o.kind] += 1
        shape["failed"] += 1
        if o.idempotent:
            idempotent[o.kind] += 1

    windows = [(f, f.instant, f.ended + grace_s) for f in faults if not f.skipped]
    per_fault: list[Counter[str]] = [Counter() for _ in windows]
    unattributed: Counter[str] = Counter()
    for o in measured:
        if o.ok or o.expected:
            continue
        for i, (_, begin, end) in enumerate(windows):
            if begin <= o.end <= end:
                per_fault[i][o.kind] += 1
                break
        else:
            unattributed[o.kind] += 1

    fault_docs = []
    for (fault, _, _), failures in zip(windows, per_fault, strict=True):
        doc = _fault_doc(fault, measured_from)
        doc["failures_in_window"] = dict(failures)
        if fault.kind in REPLICA_FAULTS:
            doc["in_flight"] = _in_flight(measured, fault)
        fault_docs.append(doc)
    fault_docs += [_fault_doc(f, measured_from) for f in faults if f.skipped]

    counters: Counter[str] = Counter()
    for lifetime in lifetimes.values():
        counters.update(lifetime)
    latencies = [o.end - o.start for o in measured if o.ok and not o.expected]
    first, last = (samples[0], samples[-1]) if samples else (None, None)
    return {
        "duration_s": round(duration_s, 2),
        "sent": len(measured),
        "succeeded": sum(1 for o in measured if o.ok and not o.expected),
        "failed": dict(failed.most_common()),
        "failed_total": sum(failed.values()),
        "expected_failures": sum(expected.values()),
        "expected_failures_by_kind": dict(expected.most_common()),
        "idempotent_failed": sum(idempotent.values()),
        "idempotent_failed_by_kind": dict(idempotent.most_common()),
        "unattributed_failures": dict(unattributed.most_common()),
        "by_shape": {shape: dict(c) for shape, c in sorted(by_shape.items())},
        "latency_ms": {
            "p50": _percentile_ms(latencies, 0.5),
            "p99": _percentile_ms(latencies, 0.99),
            "max": _percentile_ms(latencies, 1.0),
        },
        "retries": counters["retries"],
        "router_counters": dict(sorted(counters.items())),
        "router_lifetimes": len(lifetimes),
        "router_pids": list(dict.fromkeys(s.pid for s in samples)),
        "router_rss_kb_start": first.rss_kb if first else None,
        "router_rss_kb_end": last.rss_kb if last else None,
        "router_rss_kb_max": max((s.rss_kb for s in samples), default=None),
        "router_fds_start": first.fds if first else None,
        "router_fds_end": last.fds if last else None,
        "router_fds_max": max((s.fds for s in samples), default=None),
        "faults": fault_docs,
        "notes": list(notes),
        "config": dict(config or {}),
    }


def records(outcomes: Sequence[Outcome], *, measured_from: float) -> list[dict[str, Any]]:
    """Every measured request, its times in seconds after the warm-up, for `--records`."""
    return [
        {
            **asdict(o),
            "start": round(o.start - measured_from, 4),
            "end": round(o.end - measured_from, 4),
        }
        for o in outcomes
        if o.start >= measured_from
    ]


def _fault_doc(fault: Fault, measured_from: float) -> dict[str, Any]:
    doc = asdict(fault)
    doc["at_s"] = round(doc.pop("instant") - measured_from, 2)
    doc["lasted_s"] = round(doc.pop("ended") - fault.instant, 2)
    return doc


def _in_flight(measured: Sequence[Outcome], fault: Fault) -> dict[str, Any]:
    """The requests in flight at a replica fault's signal, and what became of them."""
    caught = [o for o in measured if not o.expected and o.start < fault.instant < o.end]
    failures = Counter(o.kind for o in caught if not o.ok)
    return {
        "requests": len(caught),
        "succeeded_on_target": sum(1 for o in caught if o.ok and o.replica == fault.target),
        "succeeded_elsewhere": sum(1 for o in caught if o.ok and o.replica != fault.target),
        "failed": dict(failures.most_common()),
    }


def _kinds(counts: Mapping[str, int]) -> str:
    return ", ".join(f"{kind} {n}" for kind, n in counts.items()) or "none"


def _start_end_max(doc: Mapping[str, Any], key: str) -> str:
    return f"start {doc[key + '_start']}, end {doc[key + '_end']}, max {doc[key + '_max']}"


def format_table(doc: Mapping[str, Any]) -> str:
    """The document as the lines the benchmark prints."""
    sent = doc["sent"] or 1
    rate = doc["sent"] / doc["duration_s"] if doc["duration_s"] else 0.0
    latency = doc["latency_ms"]
    rows = [
        ("duration", f"{doc['duration_s']:g} s measured, {rate:.0f} requests/s"),
        ("sent", f"{doc['sent']}"),
        ("succeeded", f"{doc['succeeded']} ({doc['succeeded'] / sent:.2%})"),
        ("failed", f"{doc['failed_total']} ({doc['failed_total'] / sent:.2%})"),
        *((f"  {kind}", str(n)) for kind, n in doc["failed"].items()),
        (
            "idempotent (GET) failed",
            f"{doc['idempotent_failed']}: {_kinds(doc['idempotent_failed_by_kind'])}",
        ),
        (
            "expected failures",
            f"{doc['expected_failures']}: {_kinds(doc['expected_failures_by_kind'])}",
        ),
        ("unattributed failures", _kinds(doc["unattributed_failures"])),
        (
            "latency of successes",
            f"p50 {latency['p50']} ms, p99 {latency['p99']} ms, max {latency['max']} ms",
        ),
        ("router retries", f"{doc['retries']} (over {doc['router_lifetimes']} router lifetimes)"),
        ("router counters", _kinds(doc["router_counters"])),
        ("router RSS kB", _start_end_max(doc, "router_rss_kb")),
        ("router open fds", _start_end_max(doc, "router_fds")),
        (
            "router pids",
            " -> ".join(map(str, doc["router_pids"])) + " (start: the first after the warm-up; "
            "end: the one running at the end; max: of all samples)",
        ),
    ]
    for shape, counts in doc["by_shape"].items():
        rows.append((f"  {shape}", _kinds(counts)))
    width = max(len(label) for label, _ in rows)
    lines = [f"{label.ljust(width)}  {value}" for label, value in rows]
    lines.append("")
    lines.append("faults (at: seconds after the warm-up):")
    for f in doc["faults"]:
        head = f"  {f['wall_time']}  at {f['at_s']:>6.1f} s  {f['kind']:<14} {f['target']}"
        lines.append(head.rstrip())
        lines.append(f"      {f['detail']}")
        if f.get("skipped"):
            continue
        lines.append(f"      failures in its window: {_kinds(f['failures_in_window'])}")
        flight = f.get("in_flight")
        if flight:
            lines.append(
                f"      in flight at the signal: {flight['requests']}, succeeded on "
                f"{f['target']} {flight['succeeded_on_target']}, elsewhere "
                f"{flight['succeeded_elsewhere']}, failed: {_kinds(flight['failed'])}"
            )
    for note in doc["notes"]:
        lines.append(f"note: {note}")
    return "\n".join(lines)
