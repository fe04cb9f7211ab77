"""The compile cache's key: a changed compiler never serves what an earlier one built."""

from __future__ import annotations

from pathlib import Path

import pytest

import ai_vmm.cache as cache


def test_fingerprint_follows_the_code(tmp_path: Path) -> None:
    package = tmp_path / "pkg"
    (package / "sub").mkdir(parents=True)
    (package / "a.py").write_text("x = 1\n")
    (package / "sub" / "b.py").write_text("y = 2\n")
    (package / "notes.txt").write_text("not code")
    fingerprint = cache.code_fingerprint.__wrapped__  # uncached: the files change below
    first = fingerprint(package)
    assert fingerprint(package) == first
    (package / "notes.txt").write_text("still not code")
    assert fingerprint(package) == first
    (package / "sub" / "b.py").write_text("y = 3\n")
    assert fingerprint(package) != first
    (package / "sub" / "b.py").write_text("y = 2\n")
    (package / "sub" / "b.py").rename(package / "b.py")  # same bytes, another module
    assert fingerprint(package) != first


def test_key_changes_with_the_code_and_the_parts(monkeypatch: pytest.MonkeyPatch) -> None:
    parts = {"source": "abc", "options": {"precision": "fp32"}}
    monkeypatch.setattr(cache, "code_fingerprint", lambda: "release-1")
    before = cache.cache_key(parts)
    assert cache.cache_key(dict(parts)) == before
    assert cache.cache_key({**parts, "source": "abd"}) != before
    monkeypatch.setattr(cache, "code_fingerprint", lambda: "release-2")
    assert cache.cache_key(parts) != before


def test_the_installed_package_is_fingerprinted() -> None:
    assert len(cache.code_fingerprint()) == 16
