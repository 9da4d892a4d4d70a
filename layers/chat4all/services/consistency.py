"""The cross-database consistency check: does everything MongoDB names exist in PostgreSQL?

Checked: every message's sender and (GROUP) recipients, every conversation's participants and `channel_id`,
every GROUP delivery's recipient and channel (the `deliveries` collection), and every external identity's user.
Users are never deleted, so a user MongoDB names that PostgreSQL lacks is an error. Within MongoDB too, every
message's conversation and every delivery's message must exist: an orphan is an error (nothing reads it); and
every participant of a conversation has its participation (else the conversation is missing from the user's
list: "participation missing") and every participation its participant (else the list shows a conversation the
user left or that is gone: "participant missing").
Channels may be deleted: a document naming a deleted channel is an error only while it is not settled (a
PENDING delivery, or a conversation with PENDING messages: they can never go out through it); a settled one is
history and is reported as a note, outside the error rate.

The MongoDB side is read in pages (ReferenceSource.pages); each page's ids are asked of PostgreSQL in one batch
per kind (ReferenceTarget.existing_users/channels) and the page's parents (conversations, messages) of MongoDB
in one batch per kind (ReferenceSource.existing), so memory is bounded by the page, whatever the size of the
collections. The error rate is errors / references checked (messages, conversations, deliveries, participants,
participations and identities); the seed's target is under 0.01%.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from chat4all.ports import DocumentRefs, ReferenceSource, ReferenceTarget

KINDS = ("message", "conversation", "delivery", "participant", "participation")
PAGE_SIZE = 1000
MAX_FINDINGS = 100
TARGET_ERROR_RATE = 0.0001  # 0.01%


@dataclass(frozen=True)
class Finding:
    kind: str  # message, conversation, delivery, identity
    document_id: str
    problem: str  # e.g. "sender missing", "channel missing (unsettled)", "conversation missing"
    missing_id: str
    error: bool = True


@dataclass
class ConsistencyReport:
    checked: dict[str, int] = field(default_factory=dict)
    errors: int = 0
    notes: int = 0
    findings: list[Finding] = field(default_factory=list)
    truncated: bool = False
    seconds: float = 0.0

    @property
    def total_checked(self) -> int:
        return sum(self.checked.values())

    @property
    def error_rate(self) -> float:
        return self.errors / self.total_checked if self.total_checked else 0.0

    @property
    def within_target(self) -> bool:
        return self.error_rate < TARGET_ERROR_RATE

    def add(self, finding: Finding) -> None:
        if finding.error:
            self.errors += 1
        else:
            self.notes += 1
        if len(self.findings) < MAX_FINDINGS:
            self.findings.append(finding)
        else:
            self.truncated = True

    def as_dict(self) -> dict[str, object]:
        return {
            "checked": dict(self.checked),
            "total_checked": self.total_checked,
            "errors": self.errors,
            "notes": self.notes,
            "error_rate": self.error_rate,
            "error_rate_percent": round(self.error_rate * 100, 6),
            "within_target": self.within_target,
            "findings": [vars(f) for f in self.findings],
            "findings_truncated": self.truncated,
            "seconds": round(self.seconds, 3),
        }


class ConsistencyCheck:
    def __init__(self, source: ReferenceSource, target: ReferenceTarget, *, page_size: int = PAGE_SIZE) -> None:
        self.source = source
        self.target = target
        self.page_size = page_size

    def run(self) -> ConsistencyReport:
        started = time.monotonic()
        report = ConsistencyReport()
        for kind in KINDS:
            report.checked[kind] = 0
            for page in self.source.pages(kind, self.page_size):
                report.checked[kind] += len(page)
                self._check_page(page, report)
        total, orphans, sample = self.target.identities(MAX_FINDINGS)
        report.checked["identity"] = total
        for index in range(orphans):
            identity = sample[index] if index < len(sample) else "?"
            report.add(Finding("identity", identity, "user missing", identity))
        report.seconds = time.monotonic() - started
        return report

    def _check_page(self, page: list[DocumentRefs], report: ConsistencyReport) -> None:
        user_ids = sorted({user for refs in page for _, user in refs.users})
        channel_ids = sorted({refs.channel_id for refs in page if refs.channel_id})
        users = self.target.existing_users(user_ids) if user_ids else set()
        channels = self.target.existing_channels(channel_ids) if channel_ids else set()
        wanted: dict[str, set[str]] = {}
        for refs in page:
            if refs.parent:
                wanted.setdefault(refs.parent[0], set()).add(refs.parent[1])
        parents = {kind: self.source.existing(kind, sorted(ids)) for kind, ids in wanted.items()}
        for refs in page:
            if refs.parent and refs.parent[1] not in parents[refs.parent[0]]:
                report.add(Finding(refs.kind, refs.document_id, f"{refs.parent[0]} missing", refs.parent[1]))
            for role, user in refs.users:
                if user not in users:
                    report.add(Finding(refs.kind, refs.document_id, f"{role} missing", user))
            if refs.channel_id and refs.channel_id not in channels:
                settled = refs.settled
                if refs.kind == "conversation":
                    settled = not self.source.has_pending_messages(refs.document_id)
                state = "settled" if settled else "unsettled"
                report.add(
                    Finding(refs.kind, refs.document_id, f"channel missing ({state})", refs.channel_id, not settled)
                )
