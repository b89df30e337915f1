"""The SDK's scheduler calls (mixed into Client): place requests on a pool of hosts, explain a decision.

Hosts are {"name", "capacity": {"vcpus", "memory_mib", ...}, "labels"}; requests {"id", "demand", ...} with
optional priority, labels, groups, project, instance_type, arrival, departure (see virtkit/sched/jsonio.py).
"""

from __future__ import annotations

from virtkit.client.transport import Transport

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing costs ~2.5 ms of every virtkit command's start
    from typing import Any


class SchedAPI:
    t: Transport

    def sched_policies(self) -> list[dict[str, Any]]:
        """The placement policies virtkitd offers: name, description, and which one is the default."""
        return self.t.request("GET", "/v1/sched/policies")  # type: ignore[no-any-return]

    def sched_place(self, hosts: list[dict[str, Any]], requests: list[dict[str, Any]], *, policy: str = "virtkit",
                    batch: bool = False, **options: Any) -> dict[str, Any]:
        """Place every request (in list order, or replayed in time when they have arrivals); options: ratios,
        groups, quotas, seed. The answer's `placements` are {"id", "host"} in request order, host None for a
        request rejected (with a `reason`)."""
        body = {"hosts": hosts, "requests": requests, "policy": policy, "batch": batch, **options}
        return self.t.request("POST", "/v1/sched/place", body)  # type: ignore[no-any-return]

    def sched_explain(self, hosts: list[dict[str, Any]], requests: list[dict[str, Any]], request_id: str, *,
                      policy: str = "virtkit", batch: bool = False, **options: Any) -> dict[str, Any]:
        """Why `request_id` goes where it goes, in the state the requests before it leave: the decision, and
        per host either the filter that rejected it (and why) or its score and the score's parts."""
        body = {"hosts": hosts, "requests": requests, "id": request_id, "policy": policy, "batch": batch, **options}
        return self.t.request("POST", "/v1/sched/explain", body)  # type: ignore[no-any-return]
