"""Redis fault drills: whatever happens to Redis, requests keep their cohorts and none fails.

Each drill runs a real sidecar (embedded engine) whose Redis sits behind a :class:`FaultProxy`,
under a steady client loop. The fault is injected, held until the sidecar shows it
(``trafficsplit_flag_store_stale``) with requests still being served, then lifted; a flag change
written at that moment must be served within the recovery bound. Afterwards: zero failed
requests, no user changed cohort, and the stale gauge is back to 0.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass

import pytest
from faultload import fault_metric, load, metric, wait_for_metric
from servers import wait_until

from flags.redis_keys import RedisKeys

from .conftest import FLAG, Drill, flag_with_new_revision

pytestmark = [pytest.mark.redis]

STALE = "trafficsplit_flag_store_stale"
# Redis back → a change written then is served. The source reconnects with exponential backoff
# capped at 0.5 s (flags/sources/redis_source.py MAX_BACKOFF_S) and resyncs at once: the target
# is 1 s; the bound adds scheduling noise on a loaded 2-core machine.
RECOVERY_BOUND_S = 1.5
# A stalled Redis is noticed when a command times out (socket timeout 2 s, plus redis-py's
# retries); a stopped one at the next command (reconcile every 0.5 s).
STALE_BOUND_S = {"stall": 15.0}
# How long each fault lasts at least: long enough for the reconnect backoff to grow (0.05 s
# doubling), so the recovery bound is measured after a real outage, not a blip.
HOLD_S = 1.5


@dataclass(frozen=True)
class Fault:
    inject: Callable[[Drill], None]
    lift: Callable[[Drill], None]
    empties_redis: bool = False  # Redis comes back without data: ops re-apply the flags
    shows_stale: bool = True


def _restart(d: Drill) -> None:
    d.redis.stop()
    d.redis.start()


FAULTS = {
    "break": Fault(lambda d: d.redis_proxy.break_(), lambda d: d.redis_proxy.restore()),
    "stall": Fault(lambda d: d.redis_proxy.stall(), lambda d: d.redis_proxy.restore()),
    # A reset connection is reopened at once: too brief to show as stale, but a reconnect.
    "reset": Fault(lambda d: d.redis_proxy.reset(), lambda d: None, shows_stale=False),
    "kill": Fault(lambda d: d.redis.kill(), lambda d: d.redis.start(), empties_redis=True),
    "restart": Fault(_restart, lambda d: None, empties_redis=True),
    "flushall": Fault(lambda d: d.redis.client().flushall(), lambda d: None, empties_redis=True),
}


@pytest.mark.parametrize("name", list(FAULTS))
def test_redis_fault_keeps_cohorts_and_fails_nothing(
    drill: Callable[..., Drill], name: str
) -> None:
    fault = FAULTS[name]
    d = drill()
    with load(d.sidecar.address) as loop:
        wait_until(lambda: loop.snapshot().statuses["OK"] >= 40, timeout=10, what="warm load")
        revision_before = max(loop.snapshot().revisions)
        accepted_before = d.redis_proxy.accepted
        injected = time.monotonic()
        fault.inject(d)
        if fault.shows_stale:
            stale_s = wait_for_metric(d.metrics_url, STALE, 1, timeout=STALE_BOUND_S.get(name, 5))
            fault_metric(f"redis_{name}.stale_after_s", stale_s)
        else:
            wait_until(
                lambda: d.redis_proxy.accepted > accepted_before,
                timeout=5,
                what="the sidecar reconnected",
            )
        # Requests go on being served from the last good flags while the fault lasts.
        wait_until(
            lambda: (
                time.monotonic() - injected >= HOLD_S
                and sum(t > injected for t in loop.snapshot().ok_times) >= 30
            ),
            timeout=10,
            what="requests served during the fault",
        )
        fault.lift(d)
        back = time.monotonic()
        revision = d.apply(flag_with_new_revision())
        if revision == revision_before:  # an emptied Redis starts counting again
            revision = d.apply(flag_with_new_revision())
        wait_until(
            lambda: revision in loop.snapshot().revisions,
            timeout=10,
            what=f"revision {revision} served",
        )
        recovery_s = loop.snapshot().revisions[revision] - back
        wait_for_metric(d.metrics_url, STALE, 0, timeout=5)
    tally = loop.snapshot()
    fault_metric(f"redis_{name}.requests", tally.sent)
    fault_metric(f"redis_{name}.failed", tally.failed)
    fault_metric(f"redis_{name}.change_applied_after_s", recovery_s)
    assert tally.failed == 0, tally.statuses
    assert not tally.cohort_changes(), "a fault moved users between cohorts"
    assert recovery_s < RECOVERY_BOUND_S, f"change served {recovery_s:.2f}s after Redis returned"
    assert d.sidecar.proc is not None and d.sidecar.proc.poll() is None


def _redis_cli(d: Drill, *args: str) -> str:
    binary = shutil.which("redis-cli")
    assert binary, "redis-cli not found: run `make test` (it installs redis-server with apt)"
    result = subprocess.run(
        [binary, "-p", str(d.redis.port), *args],
        capture_output=True,
        text=True,
        timeout=10,
        check=True,
    )
    return result.stdout.strip()


def test_raw_invalid_set_is_rejected_and_last_good_keeps_serving(
    drill: Callable[..., Drill],
) -> None:
    d = drill()
    with load(d.sidecar.address) as loop:
        wait_until(lambda: loop.snapshot().statuses["OK"] >= 40, timeout=10, what="warm load")
        revision_before = set(loop.snapshot().revisions)
        written = time.monotonic()
        assert _redis_cli(d, "SET", RedisKeys().flag(FLAG), '{"key": "digits", "variants": 42}')
        rejected_s = wait_for_metric(
            d.metrics_url, "trafficsplit_flag_rejections_total", 1, timeout=5
        )
        wait_until(
            lambda: sum(t > written for t in loop.snapshot().ok_times) >= 30,
            timeout=10,
            what="requests served after the rejection",
        )
    tally = loop.snapshot()
    fault_metric("redis_invalid_set.rejected_after_s", rejected_s)
    fault_metric("redis_invalid_set.failed", tally.failed)
    assert tally.failed == 0, tally.statuses
    assert set(tally.revisions) == revision_before, (
        "the invalid document replaced the last good one"
    )
    assert not tally.cohort_changes()
    assert metric(d.metrics_url, STALE) == 0  # Redis answers; the document is what is wrong


def test_raw_del_keeps_serving_the_same_cohorts_marked_stale(
    drill: Callable[..., Drill],
) -> None:
    """A flag document deleted by hand is data loss, not a decision: keep the last good one."""
    d = drill()
    with load(d.sidecar.address) as loop:
        wait_until(lambda: loop.snapshot().statuses["OK"] >= 40, timeout=10, what="warm load")
        deleted = time.monotonic()
        assert _redis_cli(d, "DEL", RedisKeys().flag(FLAG)) == "1"
        stale_s = wait_for_metric(d.metrics_url, STALE, 1, timeout=3)
        wait_until(
            lambda: sum(t > deleted for t in loop.snapshot().ok_times) >= 30,
            timeout=10,
            what="requests served after the DEL",
        )
    tally = loop.snapshot()
    fault_metric("redis_raw_del.stale_after_s", stale_s)
    fault_metric("redis_raw_del.failed", tally.failed)
    assert tally.failed == 0, tally.statuses
    assert not tally.cohort_changes()
