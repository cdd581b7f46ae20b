"""The store keeps the last good flags, counts rejections, and swaps snapshots whole."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from support import digits_flag

from flags import Subject, evaluate
from flags.snapshot import Snapshot
from flags.sources import FileFlagSource, MemoryFlagSource
from flags.store import Change, FlagStore, SourceStatus


def raw(**overrides: object) -> str:
    return json.dumps(digits_flag(**overrides))


def test_invalid_document_is_rejected_and_last_good_keeps_serving() -> None:
    store = FlagStore()
    store.sync({"digits": raw(revision=1)}, complete=True)
    before = store.snapshot
    changes = store.sync({"digits": raw(revision=2, default_variant="ghost")}, complete=True)
    assert changes == []
    assert store.snapshot is before and store.snapshot["digits"].revision == 1
    assert store.health.rejected_total == 1
    assert "unknown variant 'ghost'" in store.health.rejections["digits"].reason


def test_same_bad_document_is_counted_once_not_every_reconcile() -> None:
    store = FlagStore()
    for _ in range(5):
        store.sync({"digits": "{not json"}, complete=True)
    assert store.health.rejected_total == 1
    assert "digits" not in store.snapshot


def test_a_fixed_document_clears_the_rejection() -> None:
    store = FlagStore()
    store.sync({"digits": "{not json"}, complete=True)
    store.sync({"digits": raw(revision=3)}, complete=True)
    assert store.snapshot["digits"].revision == 3
    assert "digits" not in store.health.rejections


def test_complete_sync_removes_flags_the_source_no_longer_has() -> None:
    store = FlagStore()
    store.sync({"digits": raw(), "other": raw(key="other")}, complete=True)
    changes = store.sync({"digits": raw()}, complete=True)
    assert changes == [Change("other", 0, None)]
    assert list(store.snapshot) == ["digits"]


def test_listeners_hear_each_change_with_the_new_snapshot() -> None:
    store = FlagStore()
    heard: list[tuple[list[Change], Snapshot]] = []
    store.add_listener(lambda changes, snap: heard.append((changes, snap)))
    store.sync({"digits": raw(revision=1)}, complete=True)
    store.sync({"digits": raw(revision=1)}, complete=True)  # unchanged: no event
    store.sync({"digits": raw(revision=2)}, complete=False)
    assert [c for changes, _ in heard for c in changes] == [
        Change("digits", None, 1),
        Change("digits", 1, 2),
    ]
    assert heard[-1][1]["digits"].revision == 2


def test_snapshot_file_lets_a_new_store_start_stale(tmp_path: Path) -> None:
    path = tmp_path / "flags.snapshot.json"
    FlagStore(snapshot_file=path).sync({"digits": raw(revision=4)}, complete=True)
    restarted = FlagStore(snapshot_file=path)
    assert restarted.load_snapshot_file()
    assert restarted.snapshot["digits"].revision == 4
    assert restarted.health.stale


def test_memory_source_pushes_changes() -> None:
    store = FlagStore()
    source = MemoryFlagSource(store, {"digits": digits_flag()})
    asyncio.run(source.start())
    source.put("digits", digits_flag(enabled=False, revision=2))
    assert evaluate(store.snapshot, "digits", Subject("alice@example.com")).variant == "control"
    source.delete("digits")
    assert "digits" not in store.snapshot


def test_file_source_reloads_and_keeps_last_good_on_a_broken_file(tmp_path: Path) -> None:
    path = tmp_path / "flags.yaml"
    path.write_text(json.dumps({"flags": [digits_flag(revision=1)]}))
    store = FlagStore()
    source = FileFlagSource(path, store)
    source.reload()
    assert store.snapshot["digits"].revision == 1
    path.write_text("flags: [unclosed")
    source.reload()
    assert store.snapshot["digits"].revision == 1 and store.health.rejected_total == 1
    path.write_text(json.dumps([digits_flag(revision=2)]))
    source.reload()
    assert store.snapshot["digits"].revision == 2


def test_file_source_watches_in_the_background(tmp_path: Path) -> None:
    path = tmp_path / "flags.json"
    path.write_text(json.dumps(digits_flag(revision=1)))

    async def scenario() -> int:
        store = FlagStore()
        source = FileFlagSource(path, store, poll_interval=0.01)
        await source.start()
        path.write_text(json.dumps(digits_flag(revision=9, description="changed size")))
        try:
            async with asyncio.timeout(5):
                while store.snapshot["digits"].revision != 9:
                    await asyncio.sleep(0.01)
        finally:
            await source.close()
        return store.snapshot["digits"].revision

    assert asyncio.run(scenario()) == 9


def test_a_failing_listener_does_not_stop_updates() -> None:
    store = FlagStore()

    def broken(changes: list[Change], snapshot: Snapshot) -> None:
        raise RuntimeError("listener bug")

    store.add_listener(broken)
    store.sync({"digits": raw(revision=1)}, complete=True)
    store.sync({"digits": raw(revision=2)}, complete=True)
    assert store.snapshot["digits"].revision == 2


def test_an_unexpected_compile_error_is_a_rejection(monkeypatch: pytest.MonkeyPatch) -> None:
    from flags import store as store_module

    store = FlagStore()
    store.sync({"digits": raw(revision=1)}, complete=True)

    def explode(spec: object) -> None:
        raise ValueError("bug")

    monkeypatch.setattr(store_module, "CompiledFlag", explode)
    store.sync({"digits": raw(revision=2)}, complete=True)
    assert store.snapshot["digits"].revision == 1  # last good keeps serving
    assert "internal error compiling the flag: bug" in store.health.rejections["digits"].reason


def test_a_flag_missing_without_tombstone_is_data_loss_kept_stale_and_counted(
    caplog: pytest.LogCaptureFixture,
) -> None:
    store = FlagStore()
    store.sync({"digits": raw(revision=1), "other": raw(key="other")}, complete=True, tombstones=())
    for _ in range(3):  # every reconcile tick sees the same loss: logged and counted once
        changes = store.sync({"other": raw(key="other")}, complete=True, tombstones=())
    assert changes == [] and store.snapshot["digits"].revision == 1
    health = store.health
    assert health.missing_flags == ("digits",) and health.data_loss_total == 1
    assert health.stale and "digits" in (health.stale_reason or "")
    assert health.source_status == SourceStatus.OK
    assert sum("data loss" in r.message for r in caplog.records) == 1
    store.sync({"digits": raw(revision=2), "other": raw(key="other")}, complete=True, tombstones=())
    assert store.health.missing_flags == () and not store.health.stale
    assert store.snapshot["digits"].revision == 2


def test_an_empty_source_keeps_every_flag_unless_tombstoned() -> None:
    store = FlagStore()
    store.sync({"digits": raw(), "other": raw(key="other")}, complete=True, tombstones=())
    changes = store.sync({}, complete=True, tombstones={"other"})
    assert changes == [Change("other", 0, None)]
    assert list(store.snapshot) == ["digits"] and store.health.missing_flags == ("digits",)
    changes = store.sync({"digits": None}, complete=False, tombstones={"digits"})
    assert changes == [Change("digits", 0, None)] and len(store.snapshot) == 0
    assert store.health.missing_flags == () and not store.health.stale


def test_auth_failure_is_reported_as_auth_not_unreachable() -> None:
    store = FlagStore()
    store.sync({"digits": raw()}, complete=True)
    store.mark_stale("Redis refused the credentials (WRONGPASS)", status=SourceStatus.AUTH)
    assert store.health.source_status == "auth" and store.health.stale
    assert "refused the credentials" in (store.health.stale_reason or "")
    assert "unreachable" not in (store.health.stale_reason or "")
    store.mark_fresh()
    assert store.health.source_status == "ok" and not store.health.stale


def test_file_source_rejects_a_file_with_the_redis_message(tmp_path: Path) -> None:
    path = tmp_path / "flags.json"
    path.write_text('{"key": "digits",')
    store = FlagStore()
    FileFlagSource(path, store).reload()
    rejection = store.health.rejections[str(path)]
    assert rejection.issues[0].startswith("(document): not valid JSON")
    assert store.health.rejected_total == 1


def test_yaml_inf_is_rejected_like_json_1e999(tmp_path: Path) -> None:
    doc = digits_flag()
    doc["allocation"]["coverage"] = "INF"
    path = tmp_path / "flags.yaml"
    path.write_text(json.dumps(doc).replace('"INF"', ".inf"))
    store = FlagStore()
    FileFlagSource(path, store).reload()
    assert store.health.rejections["digits"].issues == (
        "allocation.coverage: must be a finite number (NaN and infinity are not allowed)",
    )
