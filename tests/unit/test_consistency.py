"""The consistency check over in-memory ports: what it counts as an error, as a note, the rate, the bounded
list, and that it asks PostgreSQL one batch per page."""

from __future__ import annotations

from typing import TYPE_CHECKING

from chat4all.ports import DocumentRefs, ReferenceSource, ReferenceTarget
from chat4all.services.consistency import MAX_FINDINGS, ConsistencyCheck

if TYPE_CHECKING:
    from collections.abc import Iterator, Sequence


class Source(ReferenceSource):
    def __init__(self, documents: dict[str, list[DocumentRefs]], pending: Sequence[str] = ()) -> None:
        self.documents = documents
        self.pending = set(pending)
        self.page_sizes: list[int] = []
        self.parent_batches: list[tuple[str, int]] = []

    def pages(self, kind: str, page_size: int) -> Iterator[list[DocumentRefs]]:
        found = self.documents.get(kind, [])
        for start in range(0, len(found), page_size):
            self.page_sizes.append(len(found[start : start + page_size]))
            yield found[start : start + page_size]

    def has_pending_messages(self, conversation_id: str) -> bool:
        return conversation_id in self.pending

    def existing(self, kind: str, ids: Sequence[str]) -> set[str]:
        self.parent_batches.append((kind, len(ids)))
        return {d.document_id for d in self.documents.get(kind, [])} & set(ids)


class Target(ReferenceTarget):
    def __init__(self, users: set[str], channels: set[str], identities: int = 0, orphans: Sequence[str] = ()) -> None:
        self.users = users
        self.channels = channels
        self.identity_count = identities
        self.orphans = list(orphans)
        self.batches: list[int] = []

    def existing_users(self, user_ids: Sequence[str]) -> set[str]:
        self.batches.append(len(user_ids))
        return self.users & set(user_ids)

    def existing_channels(self, channel_ids: Sequence[str]) -> set[str]:
        return self.channels & set(channel_ids)

    def identities(self, limit: int) -> tuple[int, int, list[str]]:
        return self.identity_count, len(self.orphans), self.orphans[:limit]


def message(
    mid: str, sender: str, *, recipients: tuple[str, ...] = (), pending: bool = False, conversation: str | None = None
) -> DocumentRefs:
    users = (("sender", sender), *(("recipient", r) for r in recipients))
    return DocumentRefs(
        "message", mid, users, None, not pending, ("conversation", conversation) if conversation else None
    )


def delivery(
    did: str, message_id: str, recipient: str = "a", *, channel: str = "ch", pending: bool = False
) -> DocumentRefs:
    return DocumentRefs("delivery", did, (("recipient", recipient),), channel, not pending, ("message", message_id))


def conversation(cid: str, *participants: str, channel: str | None = "ch") -> DocumentRefs:
    return DocumentRefs("conversation", cid, tuple(("participant", p) for p in participants), channel)


def participant(conversation_id: str, user_id: str) -> DocumentRefs:
    mirror = f"{conversation_id}:{user_id}"
    return DocumentRefs("participant", mirror, (), parent=("participation", mirror))


def participation(conversation_id: str, user_id: str) -> DocumentRefs:
    mirror = f"{conversation_id}:{user_id}"
    return DocumentRefs("participation", mirror, (), parent=("participant", mirror))


def test_a_clean_platform_has_no_error() -> None:
    source = Source(
        {
            "message": [
                message("m1", "a", conversation="c1"),
                message("m2", "b", recipients=("a", "c"), conversation="c1"),
            ],
            "conversation": [conversation("c1", "a", "b")],
            "delivery": [delivery("d1", "m2", "c", pending=True)],
            "participant": [participant("c1", "a"), participant("c1", "b")],
            "participation": [participation("c1", "a"), participation("c1", "b")],
        }
    )
    report = ConsistencyCheck(source, Target({"a", "b", "c"}, {"ch"}, identities=3)).run()
    assert report.errors == 0
    assert report.notes == 0
    assert report.findings == []
    assert report.checked == {
        "message": 2,
        "conversation": 1,
        "delivery": 1,
        "participant": 2,
        "participation": 2,
        "identity": 3,
    }
    assert report.error_rate == 0.0
    assert report.within_target


def test_missing_users_and_unsettled_channels_are_errors_settled_ones_notes() -> None:
    source = Source(
        {
            "message": [message("m1", "ghost"), message("m2", "a", recipients=("gone",))],
            "conversation": [
                conversation("c1", "a", "nobody"),
                conversation("c2", "a", channel="deleted"),  # PENDING messages behind it: an error
                conversation("c3", "a", channel="deleted"),  # all settled: a note
            ],
            "delivery": [
                DocumentRefs("delivery", "d1", (("recipient", "a"),), "deleted", False),
                DocumentRefs("delivery", "d2", (("recipient", "a"),), "deleted", True),
            ],
        },
        pending={"c2"},
    )
    report = ConsistencyCheck(source, Target({"a"}, {"ch"}, identities=2, orphans=["i1"])).run()
    problems = {(f.kind, f.document_id, f.problem, f.missing_id, f.error) for f in report.findings}
    assert problems == {
        ("message", "m1", "sender missing", "ghost", True),
        ("message", "m2", "recipient missing", "gone", True),
        ("conversation", "c1", "participant missing", "nobody", True),
        ("conversation", "c2", "channel missing (unsettled)", "deleted", True),
        ("conversation", "c3", "channel missing (settled)", "deleted", False),
        ("delivery", "d1", "channel missing (unsettled)", "deleted", True),
        ("delivery", "d2", "channel missing (settled)", "deleted", False),
        ("identity", "i1", "user missing", "i1", True),
    }
    assert report.errors == 6
    assert report.notes == 2
    assert report.total_checked == 2 + 3 + 2 + 2
    assert report.error_rate == 6 / 9
    assert not report.within_target


def test_pages_are_checked_one_batch_each_and_the_list_is_bounded() -> None:
    messages = [message(f"m{i}", f"u{i}") for i in range(2500)]
    source = Source({"message": messages})
    target = Target(set(), set())
    report = ConsistencyCheck(source, target, page_size=1000).run()
    assert source.page_sizes == [1000, 1000, 500]
    assert target.batches == [1000, 1000, 500]  # one PostgreSQL question per page
    assert report.errors == 2500
    assert len(report.findings) == MAX_FINDINGS
    assert report.truncated
    assert report.as_dict()["findings_truncated"] is True


def test_the_target_rate_is_under_one_in_ten_thousand() -> None:
    fine = [message(f"m{i}", "a") for i in range(20_000)]
    one_bad = Source({"message": [*fine, message("x", "ghost")]})
    assert ConsistencyCheck(one_bad, Target({"a"}, set())).run().within_target  # 1 in 20,001
    two_bad = Source({"message": [*fine[:9_998], message("x", "ghost"), message("y", "ghost")]})
    assert not ConsistencyCheck(two_bad, Target({"a"}, set())).run().within_target  # 2 in 10,000


def test_a_message_without_its_conversation_and_a_delivery_without_its_message_are_errors() -> None:
    source = Source(
        {
            "message": [message("m1", "a", conversation="c1"), message("m2", "a", conversation="gone")],
            "conversation": [conversation("c1", "a")],
            "delivery": [delivery("d1", "m1"), delivery("d2", "lost"), delivery("d3", "lost", "b")],
        }
    )
    report = ConsistencyCheck(source, Target({"a", "b"}, {"ch"})).run()
    problems = {(f.kind, f.document_id, f.problem, f.missing_id, f.error) for f in report.findings}
    assert problems == {
        ("message", "m2", "conversation missing", "gone", True),
        ("delivery", "d2", "message missing", "lost", True),
        ("delivery", "d3", "message missing", "lost", True),
    }
    assert report.errors == 3
    # one MongoDB question per page and parent kind, each id once
    assert source.parent_batches == [("conversation", 2), ("message", 2)]


def test_parents_are_asked_one_batch_per_page() -> None:
    messages = [message(f"m{i}", "a", conversation=f"c{i % 7}") for i in range(2500)]
    source = Source({"message": messages, "conversation": [conversation(f"c{i}", "a") for i in range(7)]})
    report = ConsistencyCheck(source, Target({"a"}, {"ch"}), page_size=1000).run()
    assert report.errors == 0
    assert source.parent_batches == [("conversation", 7)] * 3


def test_a_participant_without_its_participation_and_a_participation_without_its_participant_are_errors() -> None:
    # c1 lists a and b; b's participation is missing (c1 is not in b's list) and c's is left over (c left c1,
    # or was never in it: c1 would be in c's list)
    source = Source(
        {
            "participant": [participant("c1", "a"), participant("c1", "b")],
            "participation": [participation("c1", "a"), participation("c1", "c")],
        }
    )
    report = ConsistencyCheck(source, Target(set(), set())).run()
    problems = {(f.kind, f.document_id, f.problem, f.missing_id, f.error) for f in report.findings}
    assert problems == {
        ("participant", "c1:b", "participation missing", "c1:b", True),
        ("participation", "c1:c", "participant missing", "c1:c", True),
    }
    assert report.error_rate == 2 / 4
    assert source.parent_batches == [("participation", 2), ("participant", 2)]
