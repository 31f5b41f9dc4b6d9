"""Output files are written atomically and readable like any other file the user writes."""

from __future__ import annotations

import os

import pytest

from clusterplan.fileio import write_atomic


def test_write_atomic_replaces_whole_file_with_normal_permissions(tmp_path):
    target = tmp_path / "out.json"
    target.write_text("old")
    write_atomic(target, "new")
    assert target.read_text() == "new"
    umask = os.umask(0)
    os.umask(umask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~umask
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]  # no temporary left behind


def test_write_atomic_keeps_old_file_when_writing_fails(tmp_path):
    target = tmp_path / "out.json"
    target.write_text("old")


    with pytest.raises(TypeError):
        write_atomic(target, 123)  # type: ignore[arg-type]
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]


def test_a_symlink_keeps_pointing_at_the_new_file(tmp_path):
    from clusterplan.fileio import write_atomic

    target = tmp_path / "target.yaml"
    target.write_text("old\n")
    link = tmp_path / "link.yaml"
    link.symlink_to(target.name)
    write_atomic(link, "new\n")
    assert link.is_symlink() and target.read_text() == "new\n"


def test_a_fifo_is_written_to_not_replaced(tmp_path):
    import os
    import threading

    from clusterplan.fileio import check_output_path, write_atomic

    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    got: list[bytes] = []
    reader = threading.Thread(target=lambda: got.append(fifo.read_bytes()))
    reader.start()
    check_output_path(fifo)
    write_atomic(fifo, "plan\n")
    reader.join(timeout=10)
    assert got == [b"plan\n"] and fifo.is_fifo()


def test_a_socket_is_refused_as_an_output(tmp_path):
    import socket

    from clusterplan.errors import BadInputError
    from clusterplan.fileio import check_output_path

    path = tmp_path / "s"
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(path))
        with pytest.raises(BadInputError, match="is not a regular file"):
            check_output_path(path)


def test_an_interrupt_right_after_the_temp_file_leaves_nothing(tmp_path, monkeypatch):
    """A signal between mkstemp and the write (a new user's SIGINT to `profile` once left `.int.json.XXXX.tmp`
    behind): the temp file is removed and the old file kept."""
    from clusterplan.fileio import write_atomic_bytes

    target = tmp_path / "out.json"
    target.write_bytes(b"old")

    def interrupted(*_args, **_kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "chmod", interrupted)
    with pytest.raises(KeyboardInterrupt):
        write_atomic_bytes(target, b"new")
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]
