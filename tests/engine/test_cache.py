"""The preparation cache's keys: the code fingerprint follows every byte and name of the code
it covers, and a key follows its payload, not the order it was written in."""

from __future__ import annotations

import hashlib
from pathlib import Path

from engine.cache import cache_dir, code_fingerprint, digest, library_versions


def _tree(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return root


def test_the_code_fingerprint_follows_each_files_bytes_and_name(tmp_path: Path) -> None:
    files = {"pkg/a.py": "x = 1\n", "pkg/sub/b.py": "y = 2\n", "one.py": "z = 3\n"}
    a = _tree(tmp_path / "a", files)
    b = _tree(tmp_path / "b", files)  # the same sources elsewhere: the same fingerprint
    (b / "pkg" / "notes.txt").write_text("not code")  # only Python source counts
    assert code_fingerprint("pkg", "one.py", root=a) == code_fingerprint("pkg", "one.py", root=b)

    # by definition: SHA-256 over (relative name, NUL, bytes, NUL) of the sorted files
    h = hashlib.sha256()
    for name in ("pkg/a.py", "pkg/sub/b.py", "one.py"):
        h.update(name.encode() + b"\0" + files[name].encode() + b"\0")
    assert code_fingerprint("pkg", "one.py", root=a) == h.hexdigest()

    before = code_fingerprint("pkg", root=b)
    (b / "pkg" / "sub" / "b.py").write_text("y = 3\n")  # one byte edited
    edited = code_fingerprint("pkg", root=b)
    (b / "pkg" / "sub" / "b.py").rename(b / "pkg" / "sub" / "c.py")  # renamed
    renamed = code_fingerprint("pkg", root=b)
    (b / "pkg" / "new.py").write_text("")  # an empty module added
    added = code_fingerprint("pkg", root=b)
    assert len({before, edited, renamed, added}) == 4


def test_a_key_is_the_payloads_hash_whatever_the_order() -> None:
    one = digest({"data": {"a": 1, "b": [1, 2]}, "task": "t"})
    assert one == digest({"task": "t", "data": {"b": [1, 2], "a": 1}})
    assert one != digest({"task": "t", "data": {"b": [2, 1], "a": 1}})
    assert len(one) == 16 and int(one, 16) >= 0


def test_the_cache_folder_and_the_library_versions(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("COMPRESSION_SWEEPS_CACHE", str(tmp_path / "c"))
    assert cache_dir() == tmp_path / "c"
    import numpy

    versions = library_versions("numpy", "no-such-distribution-here")
    assert versions == {"numpy": numpy.__version__, "no-such-distribution-here": ""}
