"""The supervisor's records (supervisor.write_atomic): whole or absent, their tmp file made where a watcher of the
instance's directory does not see it (only the rename wakes it)."""

from __future__ import annotations

import json
import os

import pytest

from virtkit.container import supervisor
from virtkit.container.supervisor import write_atomic


def test_a_records_tmp_file_is_made_in_the_tmp_dir_and_renamed_in(tmp_path, monkeypatch):
    inst, run = tmp_path / "instance", tmp_path / "run"
    inst.mkdir()
    run.mkdir()
    renames = []
    real = os.rename
    monkeypatch.setattr(supervisor.os, "rename", lambda a, b: (renames.append((a, b)), real(a, b))[1])
    write_atomic(str(inst / "exit.json"), {"code": 3}, tmp_dir=str(run))
    [(src, dst)] = renames
    assert os.path.dirname(src) == str(run) and dst == str(inst / "exit.json")
    assert json.loads((inst / "exit.json").read_text()) == {"code": 3}
    assert os.listdir(inst) == ["exit.json"] and os.listdir(run) == []


def test_a_tmp_dir_on_another_file_system_falls_back_to_beside_the_record(tmp_path):
    if os.stat(tmp_path).st_dev == os.stat("/dev/shm").st_dev:
        pytest.skip(f"{tmp_path} is on /dev/shm's file system: no rename across file systems to try")
    write_atomic(str(tmp_path / "exit.json"), {"code": 0}, tmp_dir="/dev/shm")   # tmpfs: rename is EXDEV
    assert json.loads((tmp_path / "exit.json").read_text()) == {"code": 0}
    assert os.listdir(tmp_path) == ["exit.json"]
    assert not [n for n in os.listdir("/dev/shm") if n.startswith("exit.json.tmp")]
