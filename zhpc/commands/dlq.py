"""``zhpc dlq``: inspect and resume dead-lettered messages kept in the quarantine store.

Schlockmeister (``zhpc service -s schlockmeister``) files every message that
reaches a ``dlq.*`` queue; ``zhpc dlq pull`` does the same once, for whatever
waits in those queues now, when Schlockmeister is not running. An ID is a
message id, or a unique prefix of one (at least 4 characters).

Exit codes: 0 done; 2 a bad argument (nothing changed); 3 the broker could not
be reached or did not confirm: the entries not reinjected stay in the store.
Bulk operations report progress on stderr.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from zhpc.config import Config
    from zhpc.quarantine import QuarantineEntry, QuarantineStore

#: Exit code when the broker did not take a reinjected message (the entry is kept).
EXIT_BROKER = 3
#: Connection attempts for an interactive command (the store keeps the entry meanwhile).
CONNECTION_ATTEMPTS = 3
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "dlq",
        help="inspect, reinject or purge dead-lettered messages",
        description="Dead-lettered messages kept by Schlockmeister in the quarantine store. "
        "ID is a message id or a unique prefix of one; T is a time (2026-12-01T10:00, UTC) "
        "or an age (90s, 30m, 2h, 7d, 1w).",
    )
    actions = parser.add_subparsers(dest="dlq_action", metavar="ACTION", required=True)

    listing = actions.add_parser("list", help="list quarantined messages, oldest first")
    listing.add_argument("--queue", metavar="Q", help="only those that failed in queue Q")
    listing.add_argument("--since", metavar="T", help="only those quarantined since T")
    listing.add_argument("--json", action="store_true", help="a JSON array instead of a table")
    listing.set_defaults(handler=_list)

    show = actions.add_parser("show", help="everything stored about one message")
    show.add_argument("id", metavar="ID")
    show.add_argument("--json", action="store_true", help="the whole entry as JSON")
    show.set_defaults(handler=_show)

    reinject = actions.add_parser(
        "reinject",
        help="send messages back to work; their entries go once the broker confirms",
        description="By default each message goes back to the step that failed, with its "
        "recipe path, a zhpc-reinjected header and a fresh failure budget.",
    )
    reinject.add_argument("ids", nargs="+", metavar="ID")
    reinject.add_argument(
        "--from-start",
        action="store_true",
        help="start the message's recipe again instead (same recipe id)",
    )
    reinject.add_argument("--to", metavar="QUEUE", help="send to QUEUE instead of the original")
    reinject.set_defaults(handler=_reinject)

    purge = actions.add_parser("purge", help="export entries to files, then delete them")
    purge.add_argument("ids", nargs="*", metavar="ID")
    purge.add_argument("--older-than", metavar="T", help="every entry quarantined before T")
    purge.add_argument(
        "--export-dir",
        metavar="DIR",
        type=Path,
        help="where the files go (default: $ZHPC_HOME/dlq-purged)",
    )
    purge.set_defaults(handler=_purge)

    export = actions.add_parser("export", help="write entries as JSON lines (nothing deleted)")
    export.add_argument("--queue", metavar="Q")
    export.add_argument("--since", metavar="T")
    export.add_argument("-o", "--output", metavar="FILE", type=Path, help="default: stdout")
    export.set_defaults(handler=_export)

    restore = actions.add_parser("import", help="add entries from JSON-lines files")
    restore.add_argument("files", nargs="+", metavar="FILE", help="'-' reads stdin")
    restore.set_defaults(handler=_import)

    pull = actions.add_parser(
        "pull", help="file what waits in dlq.* queues now (when Schlockmeister is not running)"
    )
    pull.add_argument(
        "--queue",
        metavar="Q",
        action="append",
        default=[],
        help="only this dead-letter queue (dlq.X, or X; repeatable)",
    )
    pull.add_argument(
        "--quiet-time",
        type=float,
        default=1.0,
        metavar="SECONDS",
        help="stop after this long without a message (default 1)",
    )
    pull.set_defaults(handler=_pull)


# -- shared ------------------------------------------------------------------------------------
def open_quarantine(args: argparse.Namespace) -> tuple[Config, QuarantineStore]:
    from zhpc.config import load_config
    from zhpc.quarantine import open_store

    config = load_config(args.config, args.environment)
    return config, open_store(config.quarantine)


def selection(args: argparse.Namespace) -> dict[str, Any]:
    """``store.entries`` arguments for ``--queue`` and ``--since``, checked before a store opens."""
    from zhpc.quarantine.entry import work_queue

    return {
        "queue": work_queue(args.queue) if args.queue else None,
        "since": parse_time(args.since, "--since") if args.since else None,
    }


def parse_time(text: str, option: str, now: float | None = None) -> float:
    """An age (``2h``) or a UTC time (``2026-12-01T10:00``) as epoch seconds."""
    import datetime

    from zhpc.errors import ZhpcError

    now = time.time() if now is None else now
    value = text.strip()
    number, unit = value[:-1], value[-1:].lower()
    if unit in _UNITS and number.replace(".", "", 1).isdigit():
        return now - float(number) * _UNITS[unit]
    try:
        moment = datetime.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise ZhpcError(
            f"{option}: {text!r} is not a time (use e.g. 30m, 2h, 7d or 2026-12-01T10:00)"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=datetime.UTC)
    return moment.timestamp()


def resolve(store: QuarantineStore, ids: list[str]) -> list[QuarantineEntry]:
    """The entries for ``ids`` (each once, in order); ZhpcError before anything is changed."""
    from zhpc.errors import ZhpcError

    entries, seen = [], set()
    for wanted in ids:
        entry_id = store.resolve(wanted)
        if entry_id in seen:
            continue
        seen.add(entry_id)
        entry = store.get(entry_id)
        if entry is None:
            raise ZhpcError(f"entry {entry_id} was deleted meanwhile")
        entries.append(entry)
    return entries


class Progress:
    """``verb n/total`` on stderr for bulk work (more than one item): rewritten in place on a
    terminal, else one line at most once a second and one at the end."""

    def __init__(self, verb: str, total: int | None) -> None:
        self.verb, self.total, self.done = verb, total, 0
        self._quiet = total is not None and total <= 1
        self._tty = sys.stderr.isatty()
        self._last = 0.0
        self._shown = 0

    def step(self, count: int = 1) -> None:
        self.done += count
        now = time.monotonic()
        if not self._quiet and now - self._last >= (0.1 if self._tty else 1.0):
            self._last = now
            self._show(final=False)

    def finish(self) -> None:
        if not self._quiet and (self._shown != self.done or self._tty):
            self._show(final=True)

    def _show(self, final: bool) -> None:
        self._shown = self.done
        of = f"/{self.total}" if self.total is not None else ""
        line = f"zhpc dlq: {self.verb} {self.done}{of}"
        if self._tty:
            print(f"\r{line}", end="\n" if final else "", file=sys.stderr, flush=True)
        else:
            print(line, file=sys.stderr, flush=True)


# -- list and show -----------------------------------------------------------------------------
def _list(args: argparse.Namespace) -> int:
    chosen = selection(args)
    _config, store = open_quarantine(args)
    with store:
        entries = store.entries(**chosen)
    if args.json:
        print(json.dumps([e.summary_record() for e in entries], indent=2))
        return 0
    if not entries:
        print(f"no quarantined messages in {store.where}")
        return 0
    rows = [("ID", "QUEUE", "RECIPE", "STEP", "REASON", "DELIV", "QUARANTINED", "ERROR")]
    for e in entries:
        step = "-" if e.step is None else str(e.step)
        rows.append(
            (
                e.id,
                e.queue,
                (e.recipe_id or "-")[:36],
                step,
                e.reason,
                str(e.deliveries),
                (e.summary_record()["quarantined_at"] or "")[:19],
                _one_line(f"{e.exception}: {e.error}" if e.exception else e.error or "", 60),
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    for row in rows:
        print(
            "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=False))
            + "  "
            + row[-1]
        )
    return 0


def _show(args: argparse.Namespace) -> int:
    _config, store = open_quarantine(args)
    with store:
        (entry,) = resolve(store, [args.id])
    if args.json:
        record = entry.to_record()
        record["body_json"] = entry.body_json()
        record["timeline"] = entry.timeline()
        print(json.dumps(record, indent=2))
        return 0
    fields = [
        ("id", entry.id),
        ("queue", f"{entry.queue} (taken from {entry.dlq})"),
        ("recipe", f"{entry.recipe_id or '-'}, step {'-' if entry.step is None else entry.step}"),
        ("reason", entry.reason),
        ("error", f"{entry.exception}: {entry.error}" if entry.exception else entry.error or "-"),
        ("deliveries", str(entry.deliveries)),
        ("copies filed", str(entry.copies)),
        ("quarantined", entry.summary_record()["quarantined_at"]),
        ("summary", entry.summary),
    ]
    for name, value in fields:
        print(f"{name + ':':<14} {value}")
    print("timeline:")
    for event in entry.timeline():
        print(
            f"  {event['time'] or '(time unknown)':<24}  {event['event']:<13}  "
            f"{event['where']}  {_one_line(event['detail'], 200)}".rstrip()
        )
    print("headers:")
    for key, value in sorted(entry.headers.items()):
        print(f"  {key}: {json.dumps(value, default=str)}")
    print(f"body ({len(entry.body)} bytes):")
    print(_body_text(entry))
    return 0


def _body_text(entry: QuarantineEntry, limit: int = 4096) -> str:
    parsed = entry.body_json()
    if parsed is not None:
        return json.dumps(parsed, indent=2)
    try:
        return entry.body.decode("utf-8")
    except UnicodeDecodeError:
        shown = entry.body[:limit]
        lines = [f"  {shown[i : i + 32].hex(' ')}" for i in range(0, len(shown), 32)]
        if len(entry.body) > limit:
            lines.append(f"  ... {len(entry.body) - limit} more bytes (show --json has them all)")
        return "\n".join(lines)


def _one_line(value: str, limit: int) -> str:
    value = " ".join(value.split())
    return value if len(value) <= limit else value[: limit - 3] + "..."


# -- reinject ----------------------------------------------------------------------------------
def _reinject(args: argparse.Namespace) -> int:
    import logging

    transport_log = logging.getLogger("zhpc.transport")
    level = transport_log.level
    if args.verbose <= 0:  # a broker that is down is reported in one line below
        transport_log.setLevel(logging.CRITICAL)
    try:
        return _reinject_entries(args)
    finally:
        transport_log.setLevel(level)


def _reinject_entries(args: argparse.Namespace) -> int:
    from zhpc.errors import TransportError, ZhpcError
    from zhpc.quarantine import reinject
    from zhpc.transport import get_transport

    if args.to is not None:
        _check_queue_name(args.to)
        if args.from_start:
            raise ZhpcError(
                "--to and --from-start cannot be combined: the recipe says where "
                "its start messages go"
            )
    config, store = open_quarantine(args)
    with store:
        entries = resolve(store, args.ids)
        planned = [
            (
                entry,
                reinject.from_start(entry)
                if args.from_start
                else reinject.at_failed_step(entry, args.to),
            )
            for entry in entries
        ]
        broker = config.broker.replace(
            connection_attempts=min(config.broker.connection_attempts, CONNECTION_ATTEMPTS)
        )
        progress = Progress("reinjected", len(planned))
        done = 0
        try:
            with get_transport(broker) as transport:
                for entry, messages in planned:
                    transport.publish_many(messages)  # returns once the broker confirmed
                    done += 1
                    where = ", ".join(sorted({m.destination for m in messages}))
                    if store.delete(entry.id, entry.version):
                        print(f"reinjected {entry.id} to {where}")
                    else:
                        print(
                            f"reinjected {entry.id} to {where}; its entry was updated meanwhile "
                            "(another copy was filed) and is kept"
                        )
                    progress.step()
            progress.finish()
        except TransportError as exc:
            left = len(planned) - done
            print(
                f"zhpc dlq: broker {broker.display_url()} did not take the message(s): "
                f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}; {left} "
                f"entr{'y' if left == 1 else 'ies'} kept in {store.where}",
                file=sys.stderr,
            )
            return EXIT_BROKER
    return 0


def _check_queue_name(name: str) -> None:
    from zhpc.errors import ZhpcError

    if (
        not name
        or len(name.encode("utf-8", "replace")) > 255
        or not name.isprintable()
        or name != name.strip()
    ):
        raise ZhpcError(f"--to: {name!r:.60} is not a queue name (1-255 printable bytes)")


# -- purge, export, import (zhpc/commands/dlq_archive.py) -------------------------------------
def _purge(args: argparse.Namespace) -> int:
    from zhpc.commands.dlq_archive import purge

    return purge(args)


def _export(args: argparse.Namespace) -> int:
    from zhpc.commands.dlq_archive import export

    return export(args)


def _import(args: argparse.Namespace) -> int:
    from zhpc.commands.dlq_archive import restore

    return restore(args)


# -- pull --------------------------------------------------------------------------------------
def _pull(args: argparse.Namespace) -> int:
    from zhpc.quarantine.discovery import QueueFinder
    from zhpc.quarantine.intake import Quarantiner
    from zhpc.transport import get_transport

    config, store = open_quarantine(args)
    with store, get_transport(config.broker) as transport:
        queues: set[str] = set()
        for only in args.queue or [None]:
            queues |= QueueFinder(transport, config, only=only).find()
        quarantiner = Quarantiner(store, transport, notify_queue=config.quarantine.notify_queue)
        progress = Progress("filed", None)

        def file(message: Any) -> None:
            quarantiner.file(message)
            progress.step()

        subscriptions = [transport.subscribe(q, file, prefetch=10) for q in sorted(queues)]
        quiet_until = time.monotonic() + args.quiet_time
        while time.monotonic() < quiet_until:
            if transport.poll(0.1):
                quiet_until = time.monotonic() + args.quiet_time
        for subscription in subscriptions:
            transport.unsubscribe(subscription)
        while transport.poll(0):
            pass
        transport.flush(10)
        progress.finish()
    print(
        f"filed {quarantiner.filed} message(s) from {len(queues)} dead-letter queue(s) "
        f"in {store.where}"
    )
    return 0
