"""The instance state machine refuses illegal transitions with a message naming instance, state and action."""

import pytest

from virtkit.core.errors import InvalidState
from virtkit.core.lifecycle import ALLOWED, require
from virtkit.core.models import Instance, InstanceState


def _inst(state: str) -> Instance:
    return Instance(id="x", name="web", type="container", state=state, image="busybox:latest")


@pytest.mark.parametrize("action", sorted(ALLOWED))
@pytest.mark.parametrize("state", [s.value for s in InstanceState])
def test_every_action_in_every_state(action, state):
    if InstanceState(state) in ALLOWED[action]:
        require(_inst(state), action)
    else:
        with pytest.raises(InvalidState, match=f"cannot {action} instance 'web': it is {state}"):
            require(_inst(state), action)


def test_rm_of_running_suggests_stopping():
    with pytest.raises(InvalidState, match="stop it first"):
        require(_inst("running"), "rm")
