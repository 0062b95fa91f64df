"""Allowed roots: resolved symlinks, no '..', nothing smuggled out of a job directory."""

from __future__ import annotations

from pathlib import Path

import pytest

from zhpc.errors import StagingError
from zhpc.staging import check_allowed, find_outputs, stage_in, stage_out


@pytest.fixture
def root(tmp_path: Path) -> Path:
    data = tmp_path / "data"
    data.mkdir()
    (data / "image.cbf").write_bytes(b"\x00image")
    return data


def test_a_file_under_a_root_is_allowed_and_resolved(root: Path) -> None:
    assert check_allowed(str(root / "image.cbf"), [root]) == (root / "image.cbf").resolve()


@pytest.mark.parametrize(
    "path", ["{root}/../../etc/passwd", "{root}/sub/../image.cbf", "../../etc/passwd"]
)
def test_dot_dot_is_refused_even_inside_a_root(root: Path, path: str) -> None:
    with pytest.raises(StagingError, match=r"'\.\.' is not allowed"):
        check_allowed(path.format(root=root), [root])


def test_outside_relative_and_rootless_paths_are_refused(root: Path) -> None:
    with pytest.raises(StagingError, match="outside the allowed roots"):
        check_allowed("/etc/passwd", [root])
    with pytest.raises(StagingError, match="absolute"):
        check_allowed("image.cbf", [root])
    with pytest.raises(StagingError, match=r"no staging\.allowed_roots"):
        check_allowed(str(root / "image.cbf"), [])
    with pytest.raises(StagingError, match="control characters"):
        check_allowed(str(root / "a\nb"), [root])


def test_a_symlink_out_of_a_root_is_refused(root: Path) -> None:
    (root / "escape").symlink_to("/etc/passwd")
    with pytest.raises(StagingError, match="resolves to /etc/passwd"):
        check_allowed(str(root / "escape"), [root])


def test_a_root_spelled_through_a_symlink_still_matches(root: Path, tmp_path: Path) -> None:
    (tmp_path / "link").symlink_to(root)
    assert check_allowed(str(root / "image.cbf"), [tmp_path / "link"]) == root / "image.cbf"


def test_stage_in_checks_everything_before_copying(root: Path, tmp_path: Path) -> None:
    work = tmp_path / "work"
    work.mkdir()
    with pytest.raises(StagingError):
        stage_in([str(root / "image.cbf"), "/etc/passwd"], work, [root])
    assert list(work.iterdir()) == []
    (copy,) = stage_in([str(root / "image.cbf")], work, [root])
    assert copy == work / "image.cbf" and copy.read_bytes() == b"\x00image"
    with pytest.raises(StagingError, match="no such file"):
        stage_in([str(root / "missing.cbf")], work, [root])


def test_stage_out_copies_matches_and_refuses_symlinks_out(root: Path, tmp_path: Path) -> None:
    work = tmp_path / "work"
    (work / "sub").mkdir(parents=True)
    (work / "a.xy").write_text("1 2\n")
    (work / "sub" / "b.xy").write_text("3 4\n")
    files = find_outputs(["*.xy", "sub/*.xy"], work)
    copies = stage_out(files, work, str(root / "results"), [root])
    assert sorted(p.relative_to(root) for p in copies) == [
        Path("results/a.xy"),
        Path("results/sub/b.xy"),
    ]
    with pytest.raises(StagingError, match="outside the allowed roots"):
        stage_out(files, work, "/tmp", [root])
    (work / "leak.xy").symlink_to("/etc/passwd")
    with pytest.raises(StagingError, match="points outside the job directory"):
        find_outputs(["*.xy"], work)
    with pytest.raises(StagingError, match="relative"):
        find_outputs(["/etc/*"], work)


@pytest.fixture
def victim(tmp_path: Path) -> Path:
    """A file outside the allowed roots that no stage-out may change."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    path = elsewhere / "victim"
    path.write_text("precious\n")
    return path


@pytest.fixture
def job(tmp_path: Path) -> Path:
    work = tmp_path / "work"
    (work / "sub").mkdir(parents=True)
    (work / "out.dat").write_text("result\n")
    (work / "sub" / "new.dat").write_text("nested result\n")
    return work


def test_stage_out_never_writes_through_a_link_in_the_results_directory(
    root: Path, job: Path, victim: Path
) -> None:
    """Issue 12.9: ``results/out.dat -> /elsewhere/victim`` must not be written through."""
    results = root / "results"
    results.mkdir()
    (results / "out.dat").symlink_to(victim)
    (job / "first.dat").write_text("first\n")
    with pytest.raises(StagingError, match=r"out\.dat is a symbolic link .*refusing"):
        stage_out([job / "first.dat", job / "out.dat"], job, str(results), [root])
    assert victim.read_text() == "precious\n"
    assert not (results / "first.dat").exists()  # checked before anything was written
    # A link that stays inside the roots is refused just the same.
    (results / "out.dat").unlink()
    (results / "out.dat").symlink_to(root / "image.cbf")
    with pytest.raises(StagingError, match="symbolic link"):
        stage_out([job / "out.dat"], job, str(results), [root])
    assert (root / "image.cbf").read_bytes() == b"\x00image"


def test_stage_out_never_creates_files_through_a_linked_directory(
    root: Path, job: Path, victim: Path
) -> None:
    """Issue 12.9: ``results/sub -> /elsewhere`` must not let ``sub/new.dat`` be created there."""
    results = root / "results"
    results.mkdir()
    (results / "sub").symlink_to(victim.parent, target_is_directory=True)
    with pytest.raises(StagingError, match=r"results/sub is a symbolic link"):
        stage_out([job / "sub" / "new.dat"], job, str(results), [root])
    assert sorted(p.name for p in victim.parent.iterdir()) == ["victim"]


def test_stage_out_replaces_a_hard_linked_result_instead_of_writing_into_it(
    root: Path, job: Path, victim: Path
) -> None:
    results = root / "results"
    results.mkdir()
    (results / "out.dat").hardlink_to(victim)
    (copy,) = stage_out([job / "out.dat"], job, str(results), [root])
    assert copy == results / "out.dat" and copy.read_text() == "result\n"
    assert victim.read_text() == "precious\n"
    assert [p.name for p in results.iterdir()] == ["out.dat"]  # no temporary file left


def test_stage_out_refuses_a_file_where_a_directory_must_go(root: Path, job: Path) -> None:
    results = root / "results"
    results.mkdir()
    (results / "sub").write_text("not a directory\n")
    with pytest.raises(StagingError, match="in the way: not a directory"):
        stage_out([job / "sub" / "new.dat"], job, str(results), [root])
    (copy,) = stage_out([job / "out.dat"], job, str(results), [root])
    assert copy.read_text() == "result\n"


@pytest.fixture
def tree(root: Path) -> Path:
    """A directory to stage in, with a file and a subdirectory."""
    top = root / "scan"
    (top / "sub").mkdir(parents=True)
    (top / "a.cbf").write_bytes(b"a")
    (top / "sub" / "b.cbf").write_bytes(b"b")
    return top


def test_stage_in_refuses_a_directory_holding_a_link_out_of_the_roots(
    root: Path, tree: Path, victim: Path, tmp_path: Path
) -> None:
    """Issue 12.10: a nested link out of the roots refuses the whole input, nothing copied."""
    (tree / "sub" / "escape").symlink_to(victim)
    work = tmp_path / "work"
    work.mkdir()
    with pytest.raises(
        StagingError,
        match=r"scan/sub/escape is a symbolic link to .*victim, "
        "outside the allowed roots",
    ):
        stage_in([str(tree)], work, [root])
    assert list(work.iterdir()) == []
    (tree / "sub" / "escape").unlink()
    (tree / "sub" / "escape").symlink_to(victim.parent, target_is_directory=True)
    with pytest.raises(StagingError, match="outside the allowed roots"):
        stage_in([str(tree)], work, [root])
    assert list(work.iterdir()) == []


def test_stage_in_copies_links_inside_the_roots_as_files(
    root: Path, tree: Path, tmp_path: Path
) -> None:
    (tree / "sub" / "up").symlink_to("../../image.cbf")  # relative: means another file elsewhere
    (tree / "same").symlink_to(tree / "sub", target_is_directory=True)
    work = tmp_path / "work"
    work.mkdir()
    (copy,) = stage_in([str(tree)], work, [root])
    assert copy == work / "scan"
    found = {str(p.relative_to(copy)): p for p in copy.rglob("*")}
    assert sorted(found) == ["a.cbf", "same", "same/b.cbf", "same/up", "sub", "sub/b.cbf", "sub/up"]
    assert not any(p.is_symlink() for p in found.values())
    assert found["sub/up"].read_bytes() == b"\x00image"
    assert found["same/b.cbf"].read_bytes() == b"b"


@pytest.mark.parametrize("kind", ["dangling", "loop", "fifo"])
def test_stage_in_refuses_what_cannot_be_copied_faithfully(
    root: Path, tree: Path, tmp_path: Path, kind: str
) -> None:
    import os

    entry = tree / "sub" / "odd"
    if kind == "dangling":
        entry.symlink_to(root / "gone")
        expected = "which does not exist"
    elif kind == "loop":
        entry.symlink_to(tree, target_is_directory=True)
        expected = "links back to"
    else:
        os.mkfifo(entry)
        expected = "not a regular file or directory"
    work = tmp_path / "work"
    work.mkdir()
    with pytest.raises(StagingError, match=expected):
        stage_in([str(tree)], work, [root])
    assert list(work.iterdir()) == []
    if kind == "fifo":  # named directly, a FIFO must not block the job either
        with pytest.raises(StagingError, match="not a regular file or directory"):
            stage_in([str(entry)], work, [root])
