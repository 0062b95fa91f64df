"""Atomic, durable file replacement (:mod:`zhpc.atomic`) and the files written with it."""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Callable
from pathlib import Path

import pytest

from zhpc.atomic import write_atomic
from zhpc.jobfiles import read_recipewrapper, write_recipewrapper
from zhpc.message import Outgoing
from zhpc.spool import Spool, load_results, save_results


def leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.endswith(".tmp"))


def test_replaces_the_file_and_leaves_no_temporary_behind(tmp_path: Path) -> None:
    target = tmp_path / "state.json"
    target.write_text("old")
    write_atomic(target, "new")
    write_atomic(target, b"\x00bytes")
    assert target.read_bytes() == b"\x00bytes"
    assert leftovers(tmp_path) == []


def test_a_failed_write_keeps_what_was_there_and_cleans_up(tmp_path: Path) -> None:
    target = tmp_path / "taken"
    target.mkdir()
    (target / "inside").write_text("kept")
    with pytest.raises(OSError):
        write_atomic(target, "cannot replace a directory")
    assert (target / "inside").read_text() == "kept"
    assert leftovers(tmp_path) == []


def test_mode_is_that_of_a_new_file(tmp_path: Path) -> None:
    private = tmp_path / "private"
    write_atomic(private, "secret", mode=0o600)
    assert stat.S_IMODE(private.stat().st_mode) == 0o600


def _outputs() -> list[Outgoing]:
    return [Outgoing.json("q.success", {"status": "success"}, message_id="m-1")]


def _recipe_wrapper(directory: Path) -> Path:
    write_recipewrapper(directory / "rw.json", {"recipe": {}}, "id-1")
    return directory / "rw.json"


def _wrap_results(directory: Path) -> Path:
    path = save_results(_outputs(), directory / "rw.json", "r-1")
    assert path is not None
    return path


def _go_spool(directory: Path) -> Path:
    return Spool(directory / "spool").save("q", {"recipes": []}, {})


WRITERS: dict[str, Callable[[Path], Path]] = {
    "recipe wrapper": _recipe_wrapper,
    "wrap results": _wrap_results,
    "go spool": _go_spool,
}


@pytest.mark.parametrize("writer", WRITERS.values(), ids=WRITERS.keys())
def test_handed_over_files_are_fsynced_with_their_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, writer: Callable[[Path], Path]
) -> None:
    """A file another process reads (the job, ``--resend``, ``--pickup``) survives a crash."""
    synced: list[str] = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    path = writer(tmp_path)
    assert path.is_file()
    assert str(path.parent) in synced, synced  # the rename is durable
    assert any(Path(name).name.startswith(f".{path.name}.") for name in synced), synced


def test_recipe_wrapper_and_results_read_back(tmp_path: Path) -> None:
    rwfile = tmp_path / "rw.json"
    body = {
        "recipe": {"1": {"service": "s", "queue": "q"}, "start": [[1, {}]]},
        "recipe-pointer": 1,
        "payload": {"x": 1},
    }
    write_recipewrapper(rwfile, body, "id-7")
    assert json.loads(rwfile.read_text())["zhpc-message-id"] == "id-7"
    assert read_recipewrapper(rwfile).payload == {"x": 1}
    kept = save_results(_outputs(), rwfile, "r-7", slurm_job_id="42")
    assert kept == tmp_path / "rw.results.json"
    assert [(o.destination, o.body, o.message_id) for o in load_results(kept)] == [
        (o.destination, o.body, o.message_id) for o in _outputs()
    ]
