"""hosts.deny lines: added once per ban, removed when it ends (unless keep), the admin's own
lines untouched, the file replaced atomically with its mode and owner, symlinks refused, and
reconciled with the active bans on start. Real files in a temporary directory."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

import pytest

from porttrap.actions.hostsdeny import HostsDeny, reconcile

ADMIN = "# the admin's own\nsshd: 198.51.100.0/24\nALL: 192.0.2.9\n"


def deny(tmp_path: Path, *, keep: bool = False, name: str = "hosts.deny") -> HostsDeny:
    return HostsDeny(tmp_path / name, keep, tmp_path / "state.json")


def lines(path: Path) -> list[str]:
    return path.read_text().splitlines()


def owned(tmp_path: Path) -> dict[str, str]:
    state = tmp_path / "state.json"
    return json.loads(state.read_text())["lines"] if state.exists() else {}


# -- the pure reconciliation --------------------------------------------------------------


def test_reconcile_adds_wanted_lines_once() -> None:
    edit = reconcile(["a"], {}, {"192.0.2.1": "ALL: 192.0.2.1"}, ["192.0.2.1"], keep=False)
    assert edit.lines == ["a", "ALL: 192.0.2.1"]
    assert edit.owned == {"192.0.2.1": "ALL: 192.0.2.1"}
    again = reconcile(edit.lines, edit.owned, {"192.0.2.1": "ALL: 192.0.2.1"}, ["192.0.2.1"],
                      keep=False)  # fmt: skip
    assert again.lines is None  # nothing to write


def test_reconcile_leaves_an_identical_admin_line_alone_and_does_not_own_it() -> None:
    edit = reconcile(["ALL: 192.0.2.9 "], {}, {"192.0.2.9": "ALL: 192.0.2.9"}, ["192.0.2.9"],
                     keep=False)  # fmt: skip
    assert edit.lines is None and edit.owned == {}
    gone = reconcile(["ALL: 192.0.2.9 "], edit.owned, {}, ["192.0.2.9"], keep=False)
    assert gone.lines is None  # never porttrap's: never removed


def test_reconcile_removes_only_its_own_occurrence() -> None:
    mine = {"192.0.2.1": "ALL: 192.0.2.1"}
    file = ["ALL: 192.0.2.1", "x", "ALL: 192.0.2.1"]  # the admin wrote the same line too
    edit = reconcile(file, mine, {}, ["192.0.2.1"], keep=False)
    assert edit.lines == ["ALL: 192.0.2.1", "x"] and edit.owned == {}
    assert edit.owned_meanwhile == mine  # listed until the file no longer has it


def test_reconcile_with_keep_forgets_instead_of_removing() -> None:
    mine = {"192.0.2.1": "ALL: 192.0.2.1"}
    edit = reconcile(["ALL: 192.0.2.1"], mine, {}, ["192.0.2.1"], keep=True)
    assert edit.lines is None and edit.owned == {}


def test_reconcile_replaces_a_changed_line() -> None:
    mine = {"192.0.2.1": "sshd: 192.0.2.1"}
    edit = reconcile(["sshd: 192.0.2.1"], mine, {"192.0.2.1": "ALL: 192.0.2.1"}, ["192.0.2.1"],
                     keep=False)  # fmt: skip
    assert edit.lines == ["ALL: 192.0.2.1"]
    assert edit.owned_meanwhile == {"192.0.2.1": "ALL: 192.0.2.1"}  # the new one before it lands


# -- the file -----------------------------------------------------------------------------


def test_lines_are_added_once_and_removed_on_unban_leaving_the_admins(tmp_path: Path) -> None:
    path = tmp_path / "hosts.deny"
    path.write_text(ADMIN)
    writer = deny(tmp_path)
    writer.update([("192.0.2.1", "ALL: 192.0.2.1"), ("2001:db8::/48", "ALL: [2001:db8::]/48")])
    writer.update([("192.0.2.1", "ALL: 192.0.2.1")])  # banned again: still one line
    writer.update([("192.0.2.9", "ALL: 192.0.2.9")])  # the admin's line already says it
    writer.close()
    assert path.read_text() == ADMIN + "ALL: 192.0.2.1\nALL: [2001:db8::]/48\n"
    assert set(owned(tmp_path)) == {"192.0.2.1", "2001:db8::/48"}
    assert writer.lines == 2

    writer.update([("192.0.2.1", None), ("192.0.2.9", None), ("2001:db8::/48", None)])
    writer.close()
    assert path.read_text() == ADMIN
    assert not (tmp_path / "state.json").exists()  # nothing of porttrap's left


def test_a_missing_file_is_created_world_readable(tmp_path: Path) -> None:
    writer = deny(tmp_path)
    writer.update([("192.0.2.1", "ALL: 192.0.2.1")])
    writer.close()
    path = tmp_path / "hosts.deny"
    assert lines(path) == ["ALL: 192.0.2.1"]
    assert path.stat().st_mode & 0o777 == 0o644


def test_keep_leaves_the_lines_after_the_ban(tmp_path: Path) -> None:
    writer = deny(tmp_path, keep=True)
    writer.update([("192.0.2.1", "ALL: 192.0.2.1")])
    writer.update([("192.0.2.1", None)])
    writer.update([("192.0.2.1", "ALL: 192.0.2.1")])  # banned again: no second line
    writer.close()
    assert lines(tmp_path / "hosts.deny") == ["ALL: 192.0.2.1"]


def test_the_file_is_replaced_atomically_keeping_mode_and_owner(tmp_path: Path) -> None:
    path = tmp_path / "hosts.deny"
    path.write_text(ADMIN)
    path.chmod(0o640)
    if os.geteuid() == 0:
        os.chown(path, 1234, 5678)
    before = path.stat()
    writer = deny(tmp_path)
    writer.update([("192.0.2.1", "ALL: 192.0.2.1")])
    writer.close()
    after = path.stat()
    assert after.st_ino != before.st_ino  # a new file renamed over the old one
    assert after.st_mode == before.st_mode
    assert (after.st_uid, after.st_gid) == (before.st_uid, before.st_gid)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hosts.deny", "state.json"]


def test_a_reader_never_sees_a_half_written_file(tmp_path: Path) -> None:
    path = tmp_path / "hosts.deny"
    path.write_text(ADMIN)
    seen: list[str] = []
    done = threading.Event()

    def read_all_the_time() -> None:
        while not done.is_set():
            seen.append(path.read_text())

    reader = threading.Thread(target=read_all_the_time)
    reader.start()
    writer = deny(tmp_path)
    try:
        for n in range(200):
            writer.update([(f"192.0.2.{n % 50}", f"ALL: 192.0.2.{n % 50}" if n % 3 else None)])
            if n % 20 == 0:
                writer.close()  # one rewrite per request, not one for everything
    finally:
        writer.close()
        done.set()
        reader.join()
    assert len(seen) > 10
    for text in seen:
        assert text.startswith(ADMIN) and text.endswith("\n")
        assert all(line == "" or line.startswith(("ALL: 192.0.2.", "#", "sshd")) for line in
                   text.split("\n"))  # fmt: skip


def test_a_symlink_is_refused_and_what_it_points_to_untouched(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("INFO", logger="porttrap")
    real = tmp_path / "real.deny"
    real.write_text(ADMIN)
    (tmp_path / "hosts.deny").symlink_to(real)
    writer = deny(tmp_path)
    writer.update([("192.0.2.1", "ALL: 192.0.2.1")])
    writer.close()
    assert real.read_text() == ADMIN and (tmp_path / "hosts.deny").is_symlink()
    assert writer.failed == 1
    assert "event=action-failed action=hosts-deny" in caplog.text
    assert "is a symbolic link: porttrap replaces the file by renaming" in caplog.text
    assert f"set [actions.hosts_deny] file to the real file ({real})" in caplog.text


def test_a_failed_write_is_done_with_the_next_request(tmp_path: Path) -> None:
    real = tmp_path / "real.deny"
    (tmp_path / "hosts.deny").symlink_to(real)
    writer = deny(tmp_path)
    writer.update([("192.0.2.1", "ALL: 192.0.2.1")])
    writer.close()
    (tmp_path / "hosts.deny").unlink()  # the admin fixes it
    writer.update([("192.0.2.2", "ALL: 192.0.2.2")])
    writer.close()
    assert lines(tmp_path / "hosts.deny") == ["ALL: 192.0.2.1", "ALL: 192.0.2.2"]


def test_start_removes_lines_of_bans_that_ended_while_porttrap_was_down(tmp_path: Path) -> None:
    path = tmp_path / "hosts.deny"
    path.write_text(ADMIN)
    first = deny(tmp_path)
    first.update([(f"192.0.2.{n}", f"ALL: 192.0.2.{n}") for n in (1, 2, 3)])
    first.close()  # porttrap stops; 192.0.2.2 expires meanwhile; the admin adds a line
    with path.open("a") as file:
        file.write("ALL: 203.0.113.0/24\n")
    restarted = deny(tmp_path)
    restarted.sync({"192.0.2.1": "ALL: 192.0.2.1", "192.0.2.3": "ALL: 192.0.2.3",
                    "192.0.2.4": "ALL: 192.0.2.4"})  # fmt: skip
    restarted.close()
    assert lines(path) == [
        *ADMIN.splitlines(),
        "ALL: 192.0.2.1",
        "ALL: 192.0.2.3",
        "ALL: 203.0.113.0/24",
        "ALL: 192.0.2.4",  # an active ban without its line gets it
    ]
    assert set(owned(tmp_path)) == {"192.0.2.1", "192.0.2.3", "192.0.2.4"}


def test_a_line_the_admin_deleted_is_forgotten(tmp_path: Path) -> None:
    path = tmp_path / "hosts.deny"
    writer = deny(tmp_path)
    writer.update([("192.0.2.1", "ALL: 192.0.2.1")])
    writer.close()
    path.write_text(ADMIN)
    writer.update([("192.0.2.1", None)])
    writer.close()
    assert path.read_text() == ADMIN and owned(tmp_path) == {}


def test_another_file_or_none_configured_takes_porttraps_lines_out_of_the_old_one(
    tmp_path: Path,
) -> None:
    old = tmp_path / "hosts.deny"
    old.write_text(ADMIN)
    first = deny(tmp_path)
    first.update([("192.0.2.1", "ALL: 192.0.2.1")])
    first.close()
    moved = deny(tmp_path, name="other.deny")
    moved.sync({"192.0.2.1": "ALL: 192.0.2.1"})
    moved.close()
    assert old.read_text() == ADMIN
    assert lines(tmp_path / "other.deny") == ["ALL: 192.0.2.1"]
    unconfigured = HostsDeny(None, False, tmp_path / "state.json")
    unconfigured.sync({})
    unconfigured.close()
    assert (tmp_path / "other.deny").read_text() == ""
    assert not (tmp_path / "state.json").exists()


def test_a_crash_before_the_rename_leaves_no_line_nothing_will_remove(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The state lists a line before it is in the file: after a crash in between, the state
    may claim a line that is not there (harmless), never the other way round."""
    from porttrap.actions import hostsdeny

    def crash(*_args: object) -> None:
        raise OSError(5, "Input/output error")

    path = tmp_path / "hosts.deny"
    path.write_text(ADMIN)
    monkeypatch.setattr(hostsdeny, "write", crash)
    writer = deny(tmp_path)
    writer.update([("192.0.2.1", "ALL: 192.0.2.1")])
    writer.close()
    assert path.read_text() == ADMIN
    assert owned(tmp_path) == {"192.0.2.1": "ALL: 192.0.2.1"}
    monkeypatch.undo()
    restarted = deny(tmp_path)
    restarted.sync({})
    restarted.close()
    assert path.read_text() == ADMIN and owned(tmp_path) == {}


def test_an_edit_saved_while_porttrap_rewrites_is_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from porttrap.actions import hostsdeny

    path = tmp_path / "hosts.deny"
    path.write_text(ADMIN)
    real_read = hostsdeny.read
    edits = ["ALL: 203.0.113.7\n"]

    def read_then_the_admin_saves(file: Path) -> hostsdeny.Snapshot:
        snapshot = real_read(file)
        if edits:  # the admin's editor saves between porttrap's read and its rename
            with file.open("a") as out:
                out.write(edits.pop())
        return snapshot

    monkeypatch.setattr(hostsdeny, "read", read_then_the_admin_saves)
    writer = deny(tmp_path)
    writer.update([("192.0.2.1", "ALL: 192.0.2.1")])
    writer.close()
    assert path.read_text() == ADMIN + "ALL: 203.0.113.7\nALL: 192.0.2.1\n"
    assert writer.failed == 0
