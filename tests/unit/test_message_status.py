"""The status rules: forward only, FAILED from any state before READ, READ and FAILED final."""

from __future__ import annotations

import pytest

from chat4all.domain.models import MessageStatus as S
from chat4all.domain.models import Platform, shown_platform_message_id

ALLOWED = {
    (S.PENDING, S.SENT),
    (S.PENDING, S.DELIVERED),
    (S.PENDING, S.READ),
    (S.PENDING, S.FAILED),
    (S.SENT, S.DELIVERED),
    (S.SENT, S.READ),
    (S.SENT, S.FAILED),
    (S.DELIVERED, S.READ),
    (S.DELIVERED, S.FAILED),
}


@pytest.mark.parametrize("current", list(S))
@pytest.mark.parametrize("new", list(S))
def test_every_transition(current: S, new: S) -> None:
    assert current.can_move_to(new) is ((current, new) in ALLOWED)


def test_predecessors_are_the_states_that_can_move_forward() -> None:
    assert S.predecessors_of(S.FAILED) == [S.PENDING, S.SENT, S.DELIVERED]
    assert S.predecessors_of(S.READ) == [S.PENDING, S.SENT, S.DELIVERED]
    assert S.predecessors_of(S.SENT) == [S.PENDING]
    assert S.predecessors_of(S.PENDING) == []


def test_the_api_shows_telegrams_own_message_id_and_every_other_id_as_kept() -> None:
    assert shown_platform_message_id(Platform.TELEGRAM, "7000001:123456789:42") == "42"
    assert shown_platform_message_id(Platform.TELEGRAM, "7000001:-100200300:42") == "42"
    # a reaction has no Telegram message id of its own: its key is shown as kept
    assert shown_platform_message_id(Platform.TELEGRAM, "7000001:1:42:reaction:1700000000") == (
        "7000001:1:42:reaction:1700000000"
    )
    assert shown_platform_message_id(Platform.WHATSAPP, "wamid.HBgL") == "wamid.HBgL"
    assert shown_platform_message_id(Platform.INSTAGRAM, None) is None
