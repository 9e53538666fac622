"""Every deliberate modelrouter error derives from one base class, with a message for a person."""

from __future__ import annotations

import pytest

from router.adminclient import AdminError
from router.cli import UsageError
from router.config import ConfigError
from router.engines import ActionError as EngineActionError
from router.errors import ActionError, ModelrouterError
from router.feedback import TokenError
from router.reference import ReferenceError
from router.simulate_cli import ScenarioError
from router.store import StoreError
from router.store.redis import StoreUnavailable


@pytest.mark.parametrize(
    ("error", "message"),
    [
        (ActionError(409, "already promoted"), "already promoted"),
        (AdminError("cannot reach the admin API", status=None), "cannot reach the admin API"),
        (ConfigError(["a.yaml: 3: x", "a.yaml: 4: y"]), "a.yaml: 3: x\na.yaml: 4: y"),
        (ScenarioError(["s.yaml: horizon: bad"]), "s.yaml: horizon: bad"),
        (StoreError("state.path: cannot open"), "state.path: cannot open"),
        (StoreUnavailable("cannot reach state store"), "cannot reach state store"),
        (TokenError(410, "expired", "decision: expired"), "decision: expired"),
        (UsageError("weights must not all be zero"), "weights must not all be zero"),
        (ReferenceError("no block found"), "no block found"),
    ],
)
def test_one_base_class_with_a_message(error: ModelrouterError, message: str) -> None:
    assert isinstance(error, ModelrouterError)
    assert str(error) == message
    with pytest.raises(ModelrouterError, match="^" + message.splitlines()[0]):
        raise error


def test_engines_and_admin_api_share_one_action_error() -> None:
    assert EngineActionError is ActionError
    e = ActionError(409, "route 'clf' is promoted; nothing to abort")
    assert (e.status, e.message) == (409, "route 'clf' is promoted; nothing to abort")
