"""Staging, atomic replacement and sweeping (``ai_vmm.runtime.staging``)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from ai_vmm.runtime.staging import (
    STAGE_PREFIX,
    hold_new_directory,
    os_error_text,
    replace_path,
    sweep_stale,
)

HOLDER = """
import sys, time
from pathlib import Path
from ai_vmm.runtime.staging import hold_new_directory, STAGE_PREFIX
held = hold_new_directory(Path(sys.argv[1]), STAGE_PREFIX)
print(held.path.name, flush=True)
time.sleep(120)
"""


def _age(path: Path, seconds: float) -> None:
    then = time.time() - seconds
    os.utime(path, (then, then))


def test_sweep_removes_only_old_leftovers_that_no_live_process_holds(tmp_path: Path) -> None:
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(tmp_path)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout is not None
        held = tmp_path / holder.stdout.readline().strip()
        orphan = hold_new_directory(tmp_path, STAGE_PREFIX)
        orphan.release()  # as if its process had died
        young = hold_new_directory(tmp_path, STAGE_PREFIX)
        young.release()
        user = tmp_path / "users-own-dir"
        user.mkdir()
        for path in (held, orphan.path, user):
            _age(path, 7200)
        assert sweep_stale(tmp_path) == [orphan.path]
        assert held.is_dir() and young.path.is_dir() and user.is_dir()
    finally:
        holder.kill()
        holder.wait()
    # Killed: the kernel dropped its lock, so its (old) directory goes now; the young one stays.
    assert sweep_stale(tmp_path) == [held]
    assert young.path.is_dir()


def test_replace_path_files_and_directories(tmp_path: Path) -> None:
    (tmp_path / "new.txt").write_text("new")
    (tmp_path / "dest.txt").write_text("old")
    replace_path(tmp_path / "new.txt", tmp_path / "dest.txt")
    assert (tmp_path / "dest.txt").read_text() == "new" and not (tmp_path / "new.txt").exists()
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "f").write_text(name)
    replace_path(tmp_path / "a", tmp_path / "b")  # directory onto directory
    assert (tmp_path / "b" / "f").read_text() == "a" and not (tmp_path / "a").exists()
    replace_path(tmp_path / "b", tmp_path / "dest.txt")  # directory onto a file (forced)
    assert (tmp_path / "dest.txt" / "f").read_text() == "a"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dest.txt"]


def test_os_error_text_names_the_path_and_the_cause(tmp_path: Path) -> None:
    try:
        (tmp_path / "absent" / "x").read_text()
    except OSError as exc:
        assert os_error_text(exc) == f"{tmp_path / 'absent' / 'x'}: No such file or directory"
    # copytree gathers every failure into one shutil.Error holding a list of tuples
    source = tmp_path / "src"
    source.mkdir()
    for name in ("a", "b"):
        os.symlink(tmp_path / f"missing-{name}", source / name)
    try:
        shutil.copytree(source, tmp_path / "dst")
    except shutil.Error as exc:
        text = os_error_text(exc)
        assert text.startswith(str(tmp_path / "dst")) and "(and 1 more)" in text
        assert "\n" not in text
