"""``flagctl``: the ops CLI. A thin layer over :mod:`flags.admin` and :mod:`flags.mutations`.

Exit codes: 0 ok, 1 error (one line on stderr, never a traceback), 2 usage, 3 revision conflict
(someone else changed the flag: re-read and retry).

Everything read from Redis is untrusted: documents go through :func:`flags.schema.parse_flag`
(an invalid one is shown as INVALID with its reason), and text from Redis is printed without
markup interpretation.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import click
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from flags import mutations
from flags.admin import FlagAdmin, StoredFlag, audit_summary
from flags.errors import FlagsError, FlagValidationError, RevisionConflictError
from flags.evaluation import Subject
from flags.redis_conn import DEFAULT_URL, sync_client
from flags.redis_keys import DEFAULT_PREFIX, RedisKeys
from flags.revisions import describe
from flags.schema import FlagSpec, entry_document, entry_key, load_flag_file_text, parse_flag

F = TypeVar("F", bound=Callable[..., Any])
out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)

EXIT_ERROR = 1
EXIT_CONFLICT = 3


class Context:
    def __init__(self, url: str, prefix: str, actor: str | None) -> None:
        self.url = url
        self.keys = RedisKeys(prefix)
        self.actor = actor
        self._admin: FlagAdmin | None = None

    @property
    def admin(self) -> FlagAdmin:
        if self._admin is None:
            client = sync_client(self.url)
            self._admin = FlagAdmin(client, keys=self.keys, actor=self.actor, url=self.url)
        return self._admin


@contextmanager
def _friendly_errors() -> Iterator[None]:
    try:
        yield
    except RevisionConflictError as exc:
        err.print(f"conflict: {exc}", markup=False)
        sys.exit(EXIT_CONFLICT)
    except FlagValidationError as exc:
        err.print(f"error: {exc.args[0].split(': ', 1)[0]}:", markup=False)
        for issue in exc.issues:
            err.print(f"  {issue}", markup=False)
        sys.exit(EXIT_ERROR)
    except FlagsError as exc:
        err.print(f"error: {exc}", markup=False)
        sys.exit(EXIT_ERROR)
    except (OSError, ValueError) as exc:
        err.print(f"error: {exc}", markup=False)
        sys.exit(EXIT_ERROR)
    except Exception as exc:  # the promise is "never a traceback": say what broke, briefly
        err.print(f"error: unexpected {type(exc).__name__}: {exc} (please report it)", markup=False)
        sys.exit(EXIT_ERROR)


def json_option(func: F) -> F:
    return click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")(func)


def reason_option(func: F) -> F:
    return click.option(
        "--reason", default="", help="Why: recorded in the audit stream (recommended)."
    )(func)


def emit(as_json: bool, payload: Any, human: Callable[[], None]) -> None:
    if as_json:
        click.echo(json.dumps(payload, indent=2, sort_keys=True))
    else:
        human()


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--redis-url",
    envvar="TRAFFICSPLIT_REDIS_URL",
    default=DEFAULT_URL,
    show_default=True,
    help="redis://, rediss:// (TLS) or redis+sentinel:// URL; env TRAFFICSPLIT_REDIS_URL.",
)
@click.option(
    "--prefix", envvar="TRAFFICSPLIT_REDIS_PREFIX", default=DEFAULT_PREFIX, show_default=True
)
@click.option("--actor", envvar="TRAFFICSPLIT_ACTOR", help="Who you are, for the audit trail.")
@click.pass_context
def cli(ctx: click.Context, redis_url: str, prefix: str, actor: str | None) -> None:
    """Inspect and change trafficsplit flags in Redis."""
    ctx.obj = Context(redis_url, prefix, actor)


pass_ctx = click.make_pass_decorator(Context)


def _read_file(path: str) -> list[FlagSpec]:
    """Every flag in the file, each validated like a sidecar validates it (same messages)."""
    text = Path(path).read_text()
    documents = load_flag_file_text(text, filename=path)
    specs, issues = [], []
    for i, doc in enumerate(documents):
        try:
            specs.append(parse_flag(entry_document(doc)))  # exactly as the file source does
        except FlagValidationError as exc:
            issues += [f"{entry_key(doc, i)}: {issue}" for issue in exc.issues]
    if issues:
        raise FlagValidationError(issues)
    return specs


@cli.command()
@click.argument("file", type=click.Path(exists=True, dir_okay=False))
@json_option
def validate(file: str, as_json: bool) -> None:
    """Check a flag file (JSON or YAML) without writing anything."""
    try:
        specs = _read_file(file)
    except FlagValidationError as exc:
        if as_json:
            click.echo(json.dumps({"valid": False, "issues": list(exc.issues)}, indent=2))
            sys.exit(EXIT_ERROR)
        raise
    emit(
        as_json,
        {"valid": True, "flags": [s.key for s in specs]},
        lambda: out.print(f"ok: {', '.join(s.key for s in specs)} valid"),
    )


@cli.command()
@click.argument("file", type=click.Path(exists=True, dir_okay=False))
@reason_option
@click.option("--force", is_flag=True, help="Overwrite even if the file's revision is stale.")
@json_option
@pass_ctx
def apply(ctx: Context, file: str, reason: str, force: bool, as_json: bool) -> None:
    """Validate FILE, then write its flags (compare-and-set on each revision)."""
    written = [ctx.admin.apply(spec, reason=reason, force=force) for spec in _read_file(file)]

    def human() -> None:
        for spec in written:
            out.print(f"applied {spec.key} revision {describe(spec.revision)}")

    emit(as_json, [{"flag": s.key, "revision": s.revision} for s in written], human)


def _split_text(spec: FlagSpec) -> str:
    if spec.allocation is None:
        return "-"
    parts = [f"{k} {v:g}%" for k, v in spec.allocation.split.items()]
    return f"{spec.allocation.coverage:g}% in: " + ", ".join(parts)


@cli.command(name="list")
@json_option
@pass_ctx
def list_flags(ctx: Context, as_json: bool) -> None:
    """All flags with their state and split."""
    flags = ctx.admin.list_flags()

    def row(f: StoredFlag) -> dict[str, Any]:
        if f.spec is None:
            return {
                "flag": f.key,
                "valid": False,
                "present": f.present,
                "error": f.error,
                "revision": f.revision,
            }
        s = f.spec
        return {
            "flag": f.key,
            "valid": True,
            "revision": s.revision,
            "enabled": s.enabled,
            "default": s.default_variant,
            "variants": {k: f"{v.model}:{v.version}" for k, v in s.variants.items()},
            "split": s.allocation.split if s.allocation else None,
            "coverage": s.allocation.coverage if s.allocation else None,
        }

    def human() -> None:
        table = Table("flag", "rev", "state", "default", "allocation", "variants")
        for f in flags:
            if f.spec is None:
                state = "[red]INVALID[/red]" if f.present else "[red]MISSING[/red]"
                table.add_row(escape(f.key), describe(f.revision), state, "", escape(f.error or ""))
                continue
            s = f.spec
            state = "[green]on[/green]" if s.enabled else "[yellow]off[/yellow]"
            variants = ", ".join(f"{k}={v.model}:{v.version}" for k, v in s.variants.items())
            table.add_row(
                s.key,
                describe(s.revision),
                state,
                s.default_variant,
                escape(_split_text(s)),
                escape(variants),
            )
        out.print(table)

    emit(as_json, [row(f) for f in flags], human)


@cli.command()
@click.argument("flag")
@json_option
@pass_ctx
def show(ctx: Context, flag: str, as_json: bool) -> None:
    """A flag's definition, revision and recent audit entries."""
    stored = ctx.admin.get(flag)
    entries = [audit_summary(e) for e in ctx.admin.audit(flag, limit=5)]
    document: Any = (
        stored.spec.to_document() if stored.spec else stored.raw.decode(errors="replace")
    )
    payload = {
        "flag": flag,
        "valid": stored.spec is not None,
        "error": stored.error,
        "revision": stored.revision,
        "definition": document,
        "recent_audit": entries,
    }

    def human() -> None:
        out.print(f"[bold]{escape(flag)}[/bold] revision {describe(stored.revision)}")
        if stored.error:
            out.print(f"[red]INVALID in Redis[/red]: {escape(stored.error)}")
        out.print_json(json.dumps(document) if stored.spec else json.dumps({"raw": document}))
        _audit_table(entries, "recent changes")

    emit(as_json, payload, human)


def _audit_table(entries: list[dict[str, Any]], title: str) -> None:
    table = Table("at", "actor", "action", "rev", "reason", "changes", title=title)
    for e in entries:
        cells = (e["at"], e["actor"], e["action"], e["revision"], e["reason"])
        table.add_row(*(escape(str(c)) for c in cells), escape("\n".join(e["changes"])))
    out.print(table)


def _write_verb(
    ctx: Context,
    flag: str,
    edit: Callable[[FlagSpec], FlagSpec],
    action: str,
    reason: str,
    as_json: bool,
    message: Callable[[FlagSpec], str],
) -> None:
    spec = ctx.admin.update(flag, edit, action=action, reason=reason)
    emit(
        as_json,
        {
            "flag": flag,
            "action": action,
            "revision": spec.revision,
            "enabled": spec.enabled,
            "split": spec.allocation.split if spec.allocation else None,
        },
        lambda: out.print(message(spec)),
    )


@cli.command()
@click.argument("flag")
@click.argument("variant")
@click.argument("percent", type=click.FloatRange(0, 100))
@click.option(
    "--rule",
    default=None,
    help="Ramp this named rule's split (default: the ramp section's rule, else the allocation).",
)
@reason_option
@json_option
@pass_ctx
def ramp(
    ctx: Context,
    flag: str,
    variant: str,
    percent: float,
    rule: str | None,
    reason: str,
    as_json: bool,
) -> None:
    """Give VARIANT PERCENT % of the split (e.g. `ramp digits candidate 5`).

    Never widens exposure: coverage is kept, and a flag whose experiment lives in a rule's split
    needs `--rule` (or `ramp.rule`) rather than getting an allocation for everyone."""

    def message(spec: FlagSpec) -> str:
        note = "" if spec.enabled else "  [yellow](flag is disabled: `flagctl enable` to serve)[/]"
        where = _split_text(spec)
        if rule is not None or (spec.ramp is not None and spec.ramp.rule is not None):
            where = f"{variant} {mutations.share(spec, variant, rule=rule):g}% of its rule's split"
        return f"{flag} revision {describe(spec.revision)}: {where}{note}"

    _write_verb(
        ctx,
        flag,
        lambda s: mutations.ramp(s, variant, percent, rule=rule),
        "ramp",
        reason,
        as_json,
        message,
    )


@cli.command()
@click.argument("flag")
@reason_option
@json_option
@pass_ctx
def rollback(ctx: Context, flag: str, reason: str, as_json: bool) -> None:
    """Everyone on the default variant now (flag off, splits to 0 %)."""
    _write_verb(
        ctx,
        flag,
        mutations.rollback,
        "rollback",
        reason,
        as_json,
        lambda s: f"{flag} rolled back to {s.default_variant!r} (revision {describe(s.revision)})",
    )


@cli.command()
@click.argument("flag")
@reason_option
@json_option
@pass_ctx
def enable(ctx: Context, flag: str, reason: str, as_json: bool) -> None:
    """Turn the flag on (rules and allocation apply)."""
    _write_verb(
        ctx,
        flag,
        lambda s: mutations.set_enabled(s, True),
        "enable",
        reason,
        as_json,
        lambda s: f"{flag} enabled (revision {describe(s.revision)})",
    )


@cli.command()
@click.argument("flag")
@reason_option
@json_option
@pass_ctx
def disable(ctx: Context, flag: str, reason: str, as_json: bool) -> None:
    """Kill switch: everyone gets the default variant."""
    _write_verb(
        ctx,
        flag,
        lambda s: mutations.set_enabled(s, False),
        "disable",
        reason,
        as_json,
        lambda s: (
            f"{flag} disabled: everyone gets {s.default_variant!r} (revision {describe(s.revision)})"
        ),
    )


@cli.command()
@click.argument("flag")
@click.argument("variant")
@click.argument("users", nargs=-1, required=True)
@reason_option
@json_option
@pass_ctx
def allow(
    ctx: Context, flag: str, variant: str, users: tuple[str, ...], reason: str, as_json: bool
) -> None:
    """Allow-list USERS onto VARIANT (dogfooding)."""
    _write_verb(
        ctx,
        flag,
        lambda s: mutations.allow(s, variant, users),
        "allow",
        reason,
        as_json,
        lambda s: f"{', '.join(users)} now get {variant!r} (revision {describe(s.revision)})",
    )


@cli.command()
@click.argument("flag")
@click.option("--reason", required=True, help="Why: recorded in the audit stream (required).")
@json_option
@pass_ctx
def delete(ctx: Context, flag: str, reason: str, as_json: bool) -> None:
    """Remove FLAG on purpose: sidecars drop it (a document that just vanishes is kept as data
    loss). Audited; leaves a tombstone that a later `apply` of the flag clears."""
    revision = ctx.admin.delete(flag, reason=reason)
    emit(
        as_json,
        {"flag": flag, "action": "delete", "revision": revision},
        lambda: out.print(f"deleted {escape(flag)} (revision {describe(revision)})"),
    )


def _parse_attrs(pairs: tuple[str, ...]) -> dict[str, str]:
    attrs = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name:
            raise click.BadParameter(f"{pair!r} is not NAME=VALUE", param_hint="--attr")
        attrs[name] = value
    return attrs


@cli.command()
@click.argument("flag")
@click.argument("user_id")
@click.option("--attr", "attrs", multiple=True, metavar="NAME=VALUE", help="Request attribute.")
@json_option
@pass_ctx
def explain(ctx: Context, flag: str, user_id: str, attrs: tuple[str, ...], as_json: bool) -> None:
    """Which variant USER_ID gets, and why."""
    from flags.compiled import CompiledFlag

    _, spec = ctx.admin.get_valid(flag)
    info = CompiledFlag(spec).explain(Subject(user_id, _parse_attrs(attrs)))

    def human() -> None:
        out.print(
            f"{user_id} -> [bold]{info['variant']}[/bold] ({info['model']}:{info['version']})"
            f"  reason {info['reason']}" + (f", rule {info['rule']!r}" if info["rule"] else "")
        )
        out.print(
            f"  split bucket {info['split_bucket_percent']:.4f}%, coverage bucket "
            f"{info['coverage_bucket_percent']:.4f}% (coverage {info['coverage_percent']:g}%)"
            f", exposed={info['exposed']}, enabled={info['enabled']}"
        )

    emit(as_json, info, human)


@cli.command()
@click.argument("flag")
@click.option("--limit", default=20, show_default=True, type=click.IntRange(1, 10_000))
@json_option
@pass_ctx
def audit(ctx: Context, flag: str, limit: int, as_json: bool) -> None:
    """The change history of FLAG, newest first."""
    entries = ctx.admin.audit(flag, limit=limit)
    if not entries:
        ctx.admin.get(flag)  # unknown flag -> clear error rather than an empty table
    rows = [audit_summary(e) for e in entries]
    emit(as_json, rows, lambda: _audit_table(rows, f"audit: {flag}"))


@cli.command()
@click.option("--reconcile-interval", default=0.5, show_default=True, type=float)
@click.option("--count", default=0, type=int, help="Exit after this many changes (0 = never).")
@click.option("--timestamps", is_flag=True, help="Add applied_at (Unix time) to each line.")
@json_option
@pass_ctx
def watch(
    ctx: Context, reconcile_interval: float, count: int, timestamps: bool, as_json: bool
) -> None:
    """Follow flag changes as a sidecar sees them (one JSON line per applied change).

    The output is JSON lines with or without ``--json`` (accepted like on every verb). Writes that
    land faster than Redis delivers their announcements may be applied as one change: the store
    always loads the latest document, as a sidecar does, so ``--count`` counts applied changes."""
    from flags.snapshot import Snapshot
    from flags.sources.redis_source import RedisFlagSource
    from flags.store import Change, FlagStore

    async def run() -> None:
        store = FlagStore()
        done = asyncio.Event()
        seen = 0

        def on_change(changes: list[Change], snapshot: Snapshot) -> None:
            nonlocal seen
            for change in changes:
                line: dict[str, Any] = {
                    "flag": change.key,
                    "revision": change.new_revision,
                    "previous": change.old_revision,
                }
                if timestamps:
                    line["applied_at"] = time.time()
                click.echo(json.dumps(line))
                seen += 1
            sys.stdout.flush()
            if count and seen >= count:
                done.set()

        store.add_listener(on_change)
        source = RedisFlagSource(
            ctx.url, store, keys=ctx.keys, reconcile_interval=reconcile_interval
        )
        await source.start()
        click.echo(json.dumps({"ready": True, "flags": store.snapshot.revisions()}))
        sys.stdout.flush()
        try:
            await done.wait()
        finally:
            # Bounded: a watcher that reached --count must exit even if Redis stops answering.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(source.close(), timeout=5)

    asyncio.run(run())


def main() -> None:
    with _friendly_errors():
        _run_click()


def _run_click() -> None:
    try:
        cli.main(standalone_mode=False)
    except click.exceptions.Abort:
        err.print("aborted")
        sys.exit(EXIT_ERROR)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)


if __name__ == "__main__":
    main()
