"""``flagctl rollout start | status | pause | resume | abort | promote FLAG``.

A thin layer over :mod:`rollout.store` and :class:`flags.admin.FlagAdmin`, registered into
``flagctl`` by :func:`register`. Operators' writes are not fenced (they are not a controller
replica) but go through the same compare-and-set and audit; a state the controller changed in
between is a conflict to re-run, never a silent overwrite.
"""

from __future__ import annotations

import time
from typing import Any

import click
from rich.markup import escape
from rich.table import Table

from flags import mutations
from flags.cli import Context, emit, json_option, out, pass_ctx, reason_option
from flags.errors import FlagsError
from flags.schema import FlagSpec
from rollout.lease import Lease
from rollout.state import ACTIVE, Event, Phase, RolloutState, RolloutStateError
from rollout.store import RolloutStore, StoredState


def register(cli: click.Group) -> None:
    cli.add_command(rollout)


@click.group()
def rollout() -> None:
    """Automatic ramps: start one, watch it, pause, resume, abort or promote it."""


def _store(ctx: Context) -> RolloutStore:
    return RolloutStore(ctx.admin.client, keys=ctx.keys, actor=ctx.admin.actor, url=ctx.url)


def _event(ctx: Context, event: str, state: RolloutState, detail: str) -> Event:
    return Event(
        at=time.time(),
        event=event,
        step=state.step,
        percent=state.percent,
        actor=ctx.admin.actor,
        detail=detail,
    )


def _existing(store: RolloutStore, flag: str) -> StoredState:
    stored = store.get(flag)
    if stored is None:
        raise RolloutStateError(f"flag {flag!r} has no rollout: `flagctl rollout start {flag}`")
    return stored


def _payload(state: RolloutState, spec: FlagSpec | None) -> dict[str, Any]:
    data = state.model_dump(mode="json")
    data["percent"] = state.percent
    if spec is not None:
        data["flag_share"] = mutations.share(spec, state.variant)
        data["flag_revision"] = spec.revision
    return data


def _done(as_json: bool, state: RolloutState, text: str) -> None:
    emit(as_json, _payload(state, None), lambda: out.print(escape(text)))


@rollout.command()
@click.argument("flag")
@reason_option
@json_option
@pass_ctx
def start(ctx: Context, flag: str, reason: str, as_json: bool) -> None:
    """Start ramping FLAG's `ramp` section: the controller applies step 1 at its next tick."""
    _, spec = ctx.admin.get_valid(flag)
    if spec.ramp is None:
        raise FlagsError(
            f"flag {flag!r} has no `ramp` section: add one (variant, steps, hold_seconds) with "
            "`flagctl apply` first"
        )
    store = _store(ctx)
    try:
        current = store.get(flag)
        raw: StoredState | bytes | None = current
    except RolloutStateError:
        raw = store.raw(flag)  # an invalid state is replaced (the audit keeps its bytes)
        current = None
    if current is not None and current.state.phase in ACTIVE:
        raise FlagsError(
            f"flag {flag!r} already has a {current.state.phase} rollout: "
            f"`flagctl rollout abort {flag}` first"
        )
    now = time.time()
    state = RolloutState(
        flag=flag,
        variant=spec.ramp.variant,
        phase=Phase.PENDING,
        steps=list(spec.ramp.steps),
        started_at=now,
        updated_at=now,
        history=[Event(at=now, event="started", actor=ctx.admin.actor, detail=reason or "started")],
    )
    state = store.write(state, raw, action="rollout.start", reason=reason or "rollout started")
    _done(as_json, state, f"{flag}: rollout of {state.variant!r} over {state.steps} pending")


def _transition(
    ctx: Context, flag: str, allowed: set[Phase], phase: Phase, event: str, reason: str
) -> RolloutState:
    store = _store(ctx)
    stored = _existing(store, flag)
    state = stored.state
    if state.phase not in allowed:
        raise FlagsError(f"the rollout of {flag!r} is {state.phase}; cannot {event} it")
    if phase is Phase.RUNNING and state.step < 0:
        phase = Phase.PENDING  # paused before its first step: back to the gates, not running
    changes: dict[str, Any] = {"phase": phase, "updated_at": time.time()}
    if phase is Phase.RUNNING:
        changes["step_started_at"] = time.time()  # the hold starts over on resume
    new = state.with_changes(event=_event(ctx, event, state, reason or event), **changes)
    return store.write(new, stored, action=f"rollout.{event}", reason=reason or event)


@rollout.command()
@click.argument("flag")
@reason_option
@json_option
@pass_ctx
def pause(ctx: Context, flag: str, reason: str, as_json: bool) -> None:
    """Stop advancing (guardrails still roll back a failing candidate)."""
    state = _transition(ctx, flag, {Phase.RUNNING, Phase.PENDING}, Phase.PAUSED, "pause", reason)
    _done(as_json, state, f"{flag}: rollout paused at {state.percent:g} %")


@rollout.command()
@click.argument("flag")
@reason_option
@json_option
@pass_ctx
def resume(ctx: Context, flag: str, reason: str, as_json: bool) -> None:
    """Continue a paused rollout (the current step's hold starts over)."""
    state = _transition(ctx, flag, {Phase.PAUSED}, Phase.RUNNING, "resume", reason)
    _done(as_json, state, f"{flag}: rollout resumed at {state.percent:g} %")


@rollout.command()
@click.argument("flag")
@reason_option
@json_option
@pass_ctx
def abort(ctx: Context, flag: str, reason: str, as_json: bool) -> None:
    """End the rollout now: the candidate's share back to 0 %, everyone on the default."""
    store = _store(ctx)
    stored = _existing(store, flag)
    state = stored.state
    if state.phase not in ACTIVE:
        raise FlagsError(f"the rollout of {flag!r} is already {state.phase}")
    why = reason or "aborted by an operator"
    ctx.admin.update(
        flag, lambda s: mutations.ramp(s, state.variant, 0.0), action="rollout.abort", reason=why
    )
    new = state.with_changes(
        phase=Phase.ABORTED, updated_at=time.time(), event=_event(ctx, "aborted", state, why)
    )
    state = store.write(new, stored, action="rollout.abort", reason=why)
    _done(as_json, state, f"{flag}: rollout aborted, {state.variant!r} at 0 %")


@rollout.command()
@click.argument("flag")
@reason_option
@json_option
@pass_ctx
def promote(ctx: Context, flag: str, reason: str, as_json: bool) -> None:
    """The candidate becomes the default variant; the experiment ends (everyone on it)."""
    store = _store(ctx)
    stored = _existing(store, flag)
    state = stored.state
    if state.phase in (Phase.PROMOTED, Phase.ABORTED, Phase.ROLLED_BACK, Phase.BLOCKED):
        raise FlagsError(
            f"the rollout of {flag!r} is {state.phase}: start a new one to promote again"
        )
    why = reason or "promoted by an operator"
    ctx.admin.update(
        flag, lambda s: mutations.promote(s, state.variant), action="rollout.promote", reason=why
    )
    new = state.with_changes(
        phase=Phase.PROMOTED, updated_at=time.time(), event=_event(ctx, "promoted", state, why)
    )
    state = store.write(new, stored, action="rollout.promote", reason=why)
    _done(as_json, state, f"{flag}: {state.variant!r} is now the default variant")


@rollout.command()
@click.argument("flag")
@click.option("--history", "history_len", default=10, show_default=True, type=click.IntRange(0))
@json_option
@pass_ctx
def status(ctx: Context, flag: str, history_len: int, as_json: bool) -> None:
    """Phase, step, the flag's actual share, the last verdict and recent history."""
    _, spec = ctx.admin.get_valid(flag)
    stored = _existing(_store(ctx), flag)
    state = stored.state
    leader = Lease(ctx.admin.client, keys=ctx.keys, replica="flagctl", ttl_s=1).holder()
    payload = _payload(state, spec)
    payload["controller_leader"] = leader
    emit(as_json, payload, lambda: _print_status(state, spec, leader, history_len))


_COLOURS = {"pass": "green", "fail": "red", "wait": "yellow"}


def _print_gates(state: RolloutState) -> None:
    """The gates before the first step: verdicts, reasons and their numbers."""
    for name, gate in state.gates.items():
        colour = _COLOURS.get(gate.verdict, "white")
        out.print(f"{name} gate: [{colour}]{gate.verdict}[/]")
        for reason in gate.reasons:
            out.print(f"  {escape(reason)}")
        d = gate.detail
        if name == "golden" and d.get("control") and d.get("candidate"):
            table = Table("variant", "version", "accuracy", "errors", "p50 ms", "p99 ms")
            for side in ("control", "candidate"):
                v = d[side]
                table.add_row(
                    escape(str(v.get("variant"))),
                    escape(f"{v.get('model')} v{v.get('version')}"),
                    f"{float(v.get('accuracy', 0.0)):.4f}",
                    str(v.get("errors")),
                    *(
                        "-" if v.get(k) is None else f"{float(v[k]):.2f}"
                        for k in ("p50_ms", "p99_ms")
                    ),
                )
            out.print(table)
            out.print(
                f"  agreement {float(d.get('agreement', 0.0)):.4f}; accuracy drop "
                f"{float(d.get('accuracy_drop', 0.0)):+.4f} (allowed {d.get('max_accuracy_drop')}); "
                f"{d.get('samples')} samples on {escape(str(d.get('backend')))} at {escape(str(d.get('at')))}"
            )
        elif name == "shadow" and d:
            agreement = d.get("agreement")
            shown = "-" if agreement is None else f"{float(agreement):.4f}"
            out.print(
                f"  agreement {shown} ({d.get('agreed')}/{d.get('compared')} compared), "
                f"{d.get('errors')} errors in {d.get('calls')} shadow calls over the last "
                f"{d.get('window_seconds')} s"
            )


def _print_status(state: RolloutState, spec: FlagSpec, leader: str | None, n: int) -> None:
    share = mutations.share(spec, state.variant)
    out.print(
        f"[bold]{escape(state.flag)}[/]: {escape(state.variant)} [bold]{state.phase}[/], "
        f"step {state.step + 1}/{len(state.steps)} ({state.percent:g} %; flag gives "
        f"{share:g} %), controller: {escape(leader or 'none running')}"
    )
    _print_gates(state)
    verdict = state.last_verdict or {}
    if verdict:
        out.print(f"last verdict: {escape(str(verdict.get('status')))}")
        for fired in verdict.get("fired", []):
            out.print(f"  [red]fired[/] {escape(str(fired.get('message')))}")
        table = Table("window", "version", "attempts", "failures", "p99 ms")
        for window in ("long", "short"):
            for side in ("candidate", "control"):
                ev = verdict.get(f"{side}_{window}") or {}
                p99 = ev.get("p99_s")
                table.add_row(
                    window,
                    side,
                    str(ev.get("attempts")),
                    str(ev.get("failures")),
                    "-" if p99 is None else f"{float(p99) * 1e3:.1f}",
                )
        out.print(table)
    if n and state.history:
        table = Table("at", "event", "step", "actor", "detail", title="history")
        for e in state.history[-n:]:
            table.add_row(
                time.strftime("%H:%M:%S", time.localtime(e.at)),
                e.event,
                "" if e.step is None else str(e.step + 1),
                escape(e.actor),
                escape(e.detail),
            )
        out.print(table)
