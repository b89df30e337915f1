"""The instance state machine: which action is allowed in which state, checked in one place."""

from __future__ import annotations

from virtkit.core.errors import InvalidState
from virtkit.core.models import Instance, InstanceState

S = InstanceState

# action -> states it may start from
ALLOWED: dict[str, frozenset[InstanceState]] = {
    "start": frozenset({S.CREATED, S.STOPPED}),
    "stop": frozenset({S.RUNNING, S.PAUSED}),
    "restart": frozenset({S.RUNNING, S.PAUSED, S.STOPPED, S.CREATED}),
    "kill": frozenset({S.RUNNING, S.PAUSED}),
    "pause": frozenset({S.RUNNING}),
    "resume": frozenset({S.PAUSED}),
    "exec": frozenset({S.RUNNING}),
    "rm": frozenset({S.CREATED, S.STOPPED}),
    "stats": frozenset({S.RUNNING, S.PAUSED}),
    "attach": frozenset({S.RUNNING, S.PAUSED}),
    "update": frozenset({S.CREATED, S.RUNNING, S.PAUSED, S.STOPPED}),
}


def require(instance: Instance, action: str) -> None:
    """Raise InvalidState naming the instance, its state and the action when the transition is illegal."""
    state = S(instance.state)
    if state not in ALLOWED[action]:
        hint = ""
        if action == "rm" and state in (S.RUNNING, S.PAUSED):
            hint = " (stop it first, or use force)"
        raise InvalidState(f"cannot {action} instance '{instance.name}': it is {state.value}{hint}")
