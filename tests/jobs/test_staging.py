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
        Path("results/a.xy"), Path("results/sub/b.xy")]
    with pytest.raises(StagingError, match="outside the allowed roots"):
        stage_out(files, work, "/tmp", [root])
    (work / "leak.xy").symlink_to("/etc/passwd")
    with pytest.raises(StagingError, match="points outside the job directory"):
        find_outputs(["*.xy"], work)
    with pytest.raises(StagingError, match="relative"):
        find_outputs(["/etc/*"], work)
