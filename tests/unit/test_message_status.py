"""The status rules: forward only, FAILED from any state before READ, READ and FAILED final."""

from __future__ import annotations

import pytest

from chat4all.domain.models import MessageStatus as S
from chat4all.domain.models import Platform, aggregate_status, shown_platform_message_id

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


@pytest.mark.parametrize(
    ("deliveries", "aggregate"),
    [
        ({}, S.PENDING),
        ({S.PENDING: 2, S.SENT: 1}, S.PENDING),
        ({S.SENT: 2, S.FAILED: 1}, S.SENT),
        ({S.SENT: 1, S.READ: 2}, S.SENT),
        ({S.DELIVERED: 1, S.READ: 2, S.FAILED: 4}, S.DELIVERED),
        ({S.READ: 3}, S.READ),
        ({S.PENDING: 1, S.FAILED: 3}, S.PENDING),
        ({S.FAILED: 3}, S.FAILED),
        ({S.FAILED: 3, S.SENT: 0}, S.FAILED),
    ],
)
def test_a_group_messages_status_is_the_furthest_every_delivery_not_failed_reached(
    deliveries: dict[S, int], aggregate: S
) -> None:
    assert aggregate_status(deliveries) is aggregate
