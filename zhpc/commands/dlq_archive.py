"""``zhpc dlq purge|export|import``: quarantined messages to files and back.

Purge writes every entry to its own file before deleting it (as ``zocalo.dlq_purge``
keeps what it purges): ``DIR/<queue>/<date>/<id>.json``, written to a temporary
file, synced and renamed, so a file that exists is complete. Export and import use
one JSON object per line, the same form (:meth:`QuarantineEntry.to_record`).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from zhpc.commands.dlq import Progress, open_quarantine, parse_time, resolve, selection

if TYPE_CHECKING:  # pragma: no cover
    from zhpc.quarantine import QuarantineEntry


def purge(args: argparse.Namespace) -> int:
    from zhpc.config import zhpc_home
    from zhpc.errors import ZhpcError

    if bool(args.ids) == bool(args.older_than):
        raise ZhpcError("name the entries to purge, or give --older-than T (not both)")
    before = parse_time(args.older_than, "--older-than") if args.older_than else None
    directory = (args.export_dir or zhpc_home() / "dlq-purged").expanduser()
    _config, store = open_quarantine(args)
    with store:
        chosen = store.entries(before=before) if before is not None else resolve(store, args.ids)
        if not chosen:
            print("nothing to purge")
            return 0
        progress = Progress("purged", len(chosen))
        kept = 0
        for listed in chosen:  # bodies are read one at a time
            entry = store.get(listed.id) if before is not None else listed
            if entry is None:
                continue  # deleted meanwhile (reinjected, or purged by someone else)
            path = _write_export_file(directory, entry)
            if store.delete(entry.id, entry.version):
                print(f"purged {entry.id} (saved in {path})")
            else:
                kept += 1
                print(f"kept {entry.id}: it was updated meanwhile (saved in {path})")
            progress.step()
        progress.finish()
    return 0 if not kept else 1


def _write_export_file(directory: Path, entry: QuarantineEntry) -> Path:
    """``DIR/<queue>/<date>/<id>.json``, written atomically and synced before any delete."""
    import datetime
    import os

    from zhpc.errors import ZhpcError

    day = datetime.datetime.fromtimestamp(entry.quarantined_at, datetime.UTC).strftime("%Y-%m-%d")
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in entry.queue)[:100] or "_"
    folder = directory / safe / day
    final = folder / f"{''.join(c for c in entry.id if c.isalnum() or c in '-_')[:128]}.json"
    temporary = final.with_suffix(f".{os.getpid()}.tmp")
    try:
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(entry.to_record(), handle, indent=2)
            handle.write("\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, final)
        dir_fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError as exc:
        raise ZhpcError(
            f"cannot export {entry.id} to {folder}: {exc.strerror or exc}; nothing more purged"
        ) from None
    return final


def export(args: argparse.Namespace) -> int:
    from zhpc.errors import ZhpcError

    chosen = selection(args)
    _config, store = open_quarantine(args)
    with store:
        listed = store.entries(**chosen)
        progress = Progress("exported", len(listed))
        try:
            out = args.output.open("w", encoding="utf-8") if args.output else sys.stdout
        except OSError as exc:
            raise ZhpcError(f"cannot write {args.output}: {exc.strerror}") from None
        try:
            for summary in listed:
                entry = store.get(summary.id)
                if entry is not None:
                    out.write(json.dumps(entry.to_record(), separators=(",", ":")) + "\n")
                    progress.step()
        finally:
            if out is not sys.stdout:
                out.close()
        progress.finish()
    return 0


def restore(args: argparse.Namespace) -> int:
    from zhpc.errors import ZhpcError
    from zhpc.quarantine import QuarantineEntry

    entries: list[QuarantineEntry] = []
    for name in args.files:  # read and check everything before storing anything
        try:
            handle = sys.stdin if name == "-" else open(name, encoding="utf-8")  # noqa: SIM115
        except OSError as exc:
            raise ZhpcError(f"cannot read {name}: {exc.strerror}") from None
        with handle:
            for number, line in enumerate(handle, 1):
                if not line.strip():
                    continue
                try:
                    entries.append(QuarantineEntry.from_record(json.loads(line)))
                except (ValueError, TypeError) as exc:
                    raise ZhpcError(
                        f"{name}:{number}: not an exported entry: {exc}; nothing imported"
                    ) from None
    _config, store = open_quarantine(args)
    added = 0
    with store:
        progress = Progress("imported", len(entries))
        for entry in entries:
            added += store.restore(entry)
            progress.step()
        progress.finish()
    print(
        f"imported {added} entr{'y' if added == 1 else 'ies'}; "
        f"{len(entries) - added} already in {store.where}"
    )
    return 0
