"""The SQLite store: uniqueness, updates, migrations, persistence across reopen."""

import os
import sqlite3
import threading

import pytest

from virtkit.core.errors import AlreadyExists, NotFound
from virtkit.core.models import Instance
from virtkit.store import migrations
from virtkit.store.sqlite import SQLiteStore


def _inst(name: str, iid: str) -> Instance:
    return Instance(id=iid, name=name, type="container", state="created", image="busybox:latest",
                    spec={"command": ["sh"]}, created_at=1.0)


def test_add_get_update_delete(tmp_path):
    store = SQLiteStore(str(tmp_path / "s.db"))
    store.add_instance(_inst("web", "a" * 32))
    got = store.get_instance("web")
    assert got.spec == {"command": ["sh"]}
    assert store.get_instance("aaaaaa").name == "web"      # id prefix
    upd = store.update_instance(got.id, state="running", pid=42)
    assert (upd.state, upd.pid) == ("running", 42)
    store.delete_instance(got.id)
    with pytest.raises(NotFound, match="instance 'web' not found"):
        store.get_instance("web")


def test_names_are_unique_even_concurrently(tmp_path):
    store = SQLiteStore(str(tmp_path / "s.db"))
    errors: list[Exception] = []

    def add(i: int) -> None:
        try:
            store.add_instance(_inst("dup", f"{i:032x}"))
        except AlreadyExists as exc:
            errors.append(exc)

    threads = [threading.Thread(target=add, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(store.list_instances()) == 1
    assert len(errors) == 7 and "already exists" in str(errors[0])


def test_wal_and_schema_version_persist(tmp_path):
    path = str(tmp_path / "s.db")
    store = SQLiteStore(path)
    store.add_instance(_inst("keep", "b" * 32))
    assert store.schema_version() == migrations.LATEST
    store.close()
    raw = sqlite3.connect(path)
    assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert raw.execute("SELECT version FROM schema_version").fetchone()[0] == migrations.LATEST
    raw.close()
    assert SQLiteStore(path).get_instance("keep").id == "b" * 32


def test_newer_schema_is_refused(tmp_path):
    path = str(tmp_path / "s.db")
    SQLiteStore(path).close()
    raw = sqlite3.connect(path)
    raw.execute("UPDATE schema_version SET version = 999")
    raw.commit()
    raw.close()
    with pytest.raises(Exception, match="newer than this virtkit"):
        SQLiteStore(path)


def test_threads_that_come_and_go_do_not_pile_up_connections(tmp_path):
    """virtkitd's worker threads come and go: they share idle connections, no fd is left per thread."""
    import gc
    import threading

    store = SQLiteStore(str(tmp_path / "db.sqlite"))
    store.add_instance(_inst("a", "1" * 32))

    def db_fds() -> int:
        return sum(1 for fd in os.listdir("/proc/self/fd")
                   if os.path.realpath(f"/proc/self/fd/{fd}") == str(tmp_path / "db.sqlite"))

    before = db_fds()
    threads = [threading.Thread(target=store.get_instance, args=("a",)) for _ in range(5)]
    for t in threads:
        t.start()
        t.join()
    gc.collect()
    assert db_fds() == before
    store.close()
    assert db_fds() == 0
