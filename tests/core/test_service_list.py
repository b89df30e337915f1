"""Listing instances while others come and go: what is gone when looked at is left out, never an error."""

from __future__ import annotations

from virtkit.core.driver import ExitStatus
from virtkit.core.models import Instance
from virtkit.core.service import InstanceService
from virtkit.store.sqlite import SQLiteStore


class _ExitedAndRemovedMeanwhile:
    """A driver whose instances all exited; one of them another request (its --rm) removes from the store just
    as the list looks at it."""
    type = "container"

    def __init__(self, store: SQLiteStore, gone: str) -> None:
        self.store, self.gone = store, gone

    def exit_status(self, instance: Instance) -> ExitStatus | None:
        if instance.id == self.gone:
            self.store.delete_instance(instance.id)
        return ExitStatus(code=0, reason="exited", finished_at=1.0)

    def status(self, instance: Instance) -> str:
        return "running"

    def exit_probe(self, instance: Instance):
        return lambda: True


def _service(tmp_path):
    store = SQLiteStore(str(tmp_path / "s.db"))
    for name, iid in (("a", "a" * 32), ("b", "b" * 32)):
        store.add_instance(Instance(id=iid, name=name, type="container", state="running", image="busybox:latest"))
    return store, InstanceService(store, {"container": _ExitedAndRemovedMeanwhile(store, "a" * 32)}, images=None)


def test_list_leaves_out_an_instance_removed_while_it_looked(tmp_path):
    _store, svc = _service(tmp_path)
    assert [(i.name, i.state) for i in svc.list_all()] == [("b", "stopped")]


def test_reconcile_round_goes_on_past_an_instance_removed_meanwhile(tmp_path):
    store, svc = _service(tmp_path)
    svc.reconcile_exited(everything=True)
    assert [(i.name, i.state) for i in store.list_instances()] == [("b", "stopped")]
