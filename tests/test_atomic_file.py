"""write_text_atomically: the new content replaces the old one whole, and no temporary file is left."""

import pytest

from tfrec_towers.atomic_file import write_text_atomically


def test_writes_then_replaces_and_leaves_only_the_file(tmp_path):
    target = tmp_path / "metrics.json"
    write_text_atomically(target, "first\n")
    write_text_atomically(str(target), "é second\n")
    assert target.read_text(encoding="utf-8") == "é second\n"
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]


def test_a_failed_rename_keeps_the_old_target_and_removes_the_sibling(tmp_path):
    target = tmp_path / "taken"
    target.mkdir()
    (target / "inside").write_text("kept")
    with pytest.raises(OSError):
        write_text_atomically(target, "new")
    assert (target / "inside").read_text() == "kept"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken"]


def test_a_missing_directory_is_an_error_and_writes_nothing(tmp_path):
    with pytest.raises(FileNotFoundError):
        write_text_atomically(tmp_path / "absent" / "file.txt", "x")
    assert list(tmp_path.iterdir()) == []
