"""The route-job protocol: how every PENDING outbound message gets a route run, read top to bottom.

Every step is a function here; nothing else enqueues route jobs or moves a conversation's mark. The services
call them (messages, delivery, recovery) with their ports; the MongoDB adapter does the two writes that must be
atomic with other changes (the mark with the message, the unmark with the counter check).

What there is:

- A **route job** (`chat4all.domain.wire.RouteJob`) on the FIFO route queue, message group = conversation. It
  only says "this conversation has work": a run sends the conversation's PENDING messages lowest sequence first
  (`pending_messages`, `DeliveryService`), so neither the order of jobs nor a duplicate changes what reaches the
  platform, and re-enqueueing is always safe (route never sends a message that was sent, settled, or is being
  sent).
- The conversation's **mark** (`route_job_at` on the conversation document): "a job of this conversation is
  queued or running, and its run will send whatever is PENDING". It spares a job per message.

The steps:

1. **Mark** (ingest, inside the store's transaction). `MessageStore.add_outbound` stores the message and sets
   the mark if absent, in one transaction, and returns the mark as it was before (`StoredOutbound.previous_mark`).
   The transactions of one conversation are serialised by their write to it, so of concurrent senders exactly
   one finds no mark.
2. **Enqueue** (ingest): `after_accept`. The sender that set the mark, or that found one older than
   `ROUTE_JOB_STALE` (its job may have been lost: a crash between the commit and SendMessage, a dead-lettered
   job), enqueues a job. If SendMessage fails the mark is released (the next message enqueues) and the 202
   stands: the message is stored. A client's retry of a message still PENDING enqueues again (`enqueue_again`).
3. **Run, then unmark** (route): `pending_messages` yields the PENDING messages window by window and, when none
   is left, unmarks the conversation only if its counter is still the one read before the first window
   (`MessageStore.finish_route_job`, one conditional update): a message committed before that read is in a
   window, one committed between the read and the unmark moved the counter (nothing is unmarked and the run
   looks again), one committed after the unmark found no mark and enqueued a job of its own (1, 2). A run that
   stops early (a message must wait) keeps the mark: its job comes back.
4. **A job that waits** (route's consumer, `chat4all.consumers.consume_conversations`) is made visible again
   after its wait; once received `REFRESH_AFTER_RECEIVES` times it is replaced by a fresh job (`refresh`), far
   below the queue's maxReceiveCount, so SQS's redrive only ever takes a job that crashes every run.
5. **A dead-lettered job** (the dead-letter consumer) is replaced by a fresh job (`replace_dead_lettered`, one
   per record however often it is redelivered), whose run sends what is left and unmarks the conversation.
6. **A lost job** (the sweeper; the local stack's start): `sweep` re-enqueues every outbound message PENDING for
   longer than a threshold, deduplicated per `SWEEP_ROUND_SECONDS` round.

GROUP messages add **lanes**: one per conversation and recipient, a FIFO group of its own on the same queue
(`RouteJob.user_id`, group `{conversation_id}:{user_id}`). The conversation's run (3) does not send a GROUP
message: it fans it out into one delivery per recipient (`DeliveryService._fan_out`), and the deliveries are sent
by their lanes, so a recipient whose platform fails or waits out a back-off holds back only their own lane, and
each recipient still gets the conversation's messages in sequence order (fan-out is in sequence order, within
the conversation's one FIFO group; a lane sends its lowest PENDING sequence first, one at a time). A lane's
**mark** (`marked_at` on its `lanes` document) is the conversation's mark for that lane: "a job of this lane is
queued or running, and its run will send whatever is PENDING in it". Its counter is the lane's
`fanned_sequence`, the highest sequence fanned into it (the conversation's counter is `last_sequence`).

7. **Fan-out raises the lanes' counters** (route, the conversation's run), after the message's deliveries are
   stored: one write raises `fanned_sequence` of every lane the message has a PENDING delivery in to the
   message's sequence (`open_lanes`, DeliveryStore.fan_into_lanes).
8. **... then marks and enqueues**: one read finds which of those lanes are unmarked (or marked longer ago than
   ROUTE_JOB_STALE: a lost job), one write marks them, and their lane jobs go out with SendMessageBatch, ten per
   call. Lanes a batch refused are unmarked again and the message stays in its conversation's run (not marked
   fanned out): the run comes back and does the fan-out again, whose writes are all idempotent.
9. **A lane's run, then unmark** (route): `lane_deliveries` reads the lane's `fanned_sequence`, then yields its
   PENDING deliveries window by window in sequence order; when none is left it unmarks the lane only if
   `fanned_sequence` is still the one it read (DeliveryStore.finish_lane, one conditional update), else reads
   it and the windows again. Race-free as (3) is: take a fan-out of sequence s into the lane, its deliveries
   stored (a) before it raises the counter (b), before it reads the mark (c). If (b) came before the run read
   the counter, (a) did too and the delivery is in a window. If (b) came after that read and before the
   conditional unmark, the counter moved (it only moves to a sequence above every one fanned into the lane
   before: fan-outs run in sequence order; a fan-out done again after a crash raises it to the same s only
   if its first try had raised it already, after storing the same deliveries) and the unmark does nothing: the
   run looks again. If (b) came after the unmark, (c) came after it too and finds the lane unmarked: the
   fan-out enqueues a job of its own. So a PENDING delivery always has a lane job queued or running. A run
   that stops early (a delivery must wait) keeps the mark; its job comes back (4).
10. **Lane jobs that wait, die or get lost** are the conversation's jobs' cases: one that waits long is replaced
   by a fresh one (`refresh`); a dead-lettered one is replaced too (`replace_dead_lettered`, after its delivery
   is settled FAILED if it was never sent); `sweep` re-enqueues a job per lane with deliveries PENDING longer
   than its threshold.
"""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import TYPE_CHECKING

from chat4all.domain.errors import DependencyUnavailableError
from chat4all.domain.wire import RouteJob
from chat4all.ports import PendingJob

if TYPE_CHECKING:
    from collections.abc import Iterator
    from datetime import datetime

    from chat4all.domain.models import Conversation, Delivery, Message
    from chat4all.ports import ConversationStore, DeliveryStore, MessageStore, OutboundQueue, StoredOutbound

logger = logging.getLogger(__name__)

# (2) a mark older than this gets each new message a job of its own: the mark's job may have been lost
ROUTE_JOB_STALE = timedelta(seconds=60)
# (3) PENDING messages a run reads at once: one query for the next ten, not one per message
WINDOW = 10
# (4) a job received this many times is replaced; the queue's maxReceiveCount (template.yaml: 100) is far above
REFRESH_AFTER_RECEIVES = 25
# (5) the dedupe round of the job that replaces a dead-lettered one
DEAD_LETTER_ROUND = "dead-letter"
# (6) enqueues of one message within one round share a deduplication id: sweeps running at once (a retried
# invocation, a start-up sweep next to a scheduled one) add one record, and a message still PENDING gets at
# most one more record per round; at most SWEEP_LIMIT messages per sweep, oldest first
SWEEP_ROUND_SECONDS = 300
SWEEP_LIMIT = 5000


# ------------------------------------------------------------------ 1, 2: ingest marks and enqueues


def needs_job(stored: StoredOutbound) -> bool:
    """Whether this send must enqueue its conversation's job: it set the mark, or the mark it found is stale."""
    previous = stored.previous_mark
    return previous is None or stored.message.created_at - previous > ROUTE_JOB_STALE


def after_accept(stored: StoredOutbound, messages: MessageStore, queue: OutboundQueue) -> None:
    """The message is stored (and the conversation marked): enqueue its conversation's job when this send owes
    one. A failed enqueue unmarks the conversation, so that its next message enqueues; the sweeper takes this one
    up in any case."""
    if needs_job(stored) and not enqueue_again(stored.message, queue):
        try:
            messages.release_route_job(stored.message.conversation_id)
        except DependencyUnavailableError:
            logger.warning(
                "conversation %s stays marked as having a route job until the mark is stale",
                stored.message.conversation_id,
            )


def enqueue_again(message: Message, queue: OutboundQueue) -> bool:
    """A job for the message's conversation (a retried request of a message still PENDING, or step 2); False
    when the queue did not take it (logged: the message is stored, the sweeper re-enqueues it)."""
    try:
        queue.enqueue(message.message_id, message.conversation_id)
    except DependencyUnavailableError:
        logger.warning("message %s stored but not enqueued; the sweeper will", message.message_id)
        return False
    return True


# ------------------------------------------------------------------ 3: route runs and unmarks


def pending_messages(
    conversation_id: str, conversation: Conversation | None, messages: MessageStore, conversations: ConversationStore
) -> Iterator[Message]:
    """The conversation's PENDING outbound messages in sequence order, WINDOW at a time; when none is left, the
    conversation is unmarked if its counter (as read in `conversation`, before the first window) has not moved,
    else the counter and the windows are read again. A caller that stops early leaves the mark: its job comes
    back."""
    counter = conversation.last_sequence if conversation is not None else None
    while True:
        window = messages.unsettled(conversation_id, WINDOW)
        yield from window
        if len(window) == WINDOW:
            continue
        if counter is None:
            # a conversation without a counter (or gone): unmark, and look once more for a late message
            if messages.release_route_job(conversation_id):
                yield from messages.unsettled(conversation_id, WINDOW)
            return
        if messages.finish_route_job(conversation_id, counter):
            return
        current = conversations.get_conversation(conversation_id)
        counter = current.last_sequence if current is not None else None


# ------------------------------------------------------------------ 7, 8, 9: GROUP lanes


def open_lanes(
    message: Message, user_ids: list[str], deliveries: DeliveryStore, queue: OutboundQueue, now: datetime
) -> bool:
    """Steps 7 and 8 for a message whose deliveries are stored: raise the lanes' counters, then mark the
    unmarked (or stale) ones and enqueue their jobs, ten per SendMessageBatch. False when the queue refused some
    (their marks are removed again): the caller keeps the message in its conversation's run and comes back."""
    if not user_ids:
        return True
    conversation_id = message.conversation_id
    deliveries.fan_into_lanes(conversation_id, user_ids, message.sequence)
    unmarked = deliveries.lanes_to_mark(conversation_id, user_ids, now - ROUTE_JOB_STALE)
    if not unmarked:
        return True
    deliveries.mark_lanes(conversation_id, unmarked, now)
    jobs = [
        RouteJob(
            message_id=message.message_id,
            conversation_id=conversation_id,
            user_id=u,
            correlation_id=message.correlation_id,
        )
        for u in unmarked
    ]
    refused = queue.enqueue_lanes(jobs)
    if not refused:
        return True
    logger.warning("%d of %d lane jobs of message %s refused", len(refused), len(jobs), message.message_id)
    try:
        deliveries.release_lanes(conversation_id, [job.user_id for job in refused if job.user_id is not None])
    except DependencyUnavailableError:
        logger.warning("lanes of conversation %s stay marked until their marks are stale", conversation_id)
    return False


def lane_deliveries(
    conversation_id: str, user_id: str, deliveries: DeliveryStore, messages: MessageStore
) -> Iterator[tuple[Delivery, Message | None]]:
    """Step 9: the lane's PENDING deliveries in sequence order, WINDOW at a time, each with its message (one
    read per window); when none is left, the lane is unmarked if its `fanned_sequence` (read before the first
    window) has not moved, else it and the windows are read again. A caller that stops early leaves the mark."""
    counter = deliveries.lane_counter(conversation_id, user_id)
    while True:
        window = deliveries.lane_pending(conversation_id, user_id, WINDOW)
        texts = messages.get_messages([d.message_id for d in window])
        yield from ((delivery, texts.get(delivery.message_id)) for delivery in window)
        if len(window) == WINDOW:
            continue
        if counter is None:
            # no lanes document (a fan-out that died before step 7): nothing to unmark, and nothing was marked
            return
        if deliveries.finish_lane(conversation_id, user_id, counter):
            return
        counter = deliveries.lane_counter(conversation_id, user_id)


# ------------------------------------------------------------------ 4, 5, 6, 10: jobs that wait, die or get lost


def refresh(job: RouteJob, dedupe_key: str, queue: OutboundQueue) -> None:
    """Replace a job that waited REFRESH_AFTER_RECEIVES receives with a fresh one (`dedupe_key`: new per
    replacement, so the queue does not drop it as a repeat of the old); a lane's job by a lane job (step 10)."""
    if job.user_id is not None:
        queue.requeue([PendingJob(job.message_id, job.conversation_id, 0, job.user_id)], f"refresh:{dedupe_key}")
        return
    queue.enqueue(job.message_id, job.conversation_id, dedupe_key=dedupe_key)


def replace_dead_lettered(
    message_id: str, conversation_id: str, queue: OutboundQueue, user_id: str | None = None
) -> None:
    """A dead-lettered job was its conversation's (or its lane's), which later messages may count on (steps 1,
    8): a fresh one."""
    queue.requeue([PendingJob(message_id, conversation_id, 0, user_id)], DEAD_LETTER_ROUND)


def sweep(
    messages: MessageStore,
    queue: OutboundQueue,
    now: datetime,
    pending_after_seconds: int,
    limit: int = SWEEP_LIMIT,
    deliveries: DeliveryStore | None = None,
) -> tuple[int, int]:
    """Re-enqueue the outbound messages PENDING for longer than `pending_after_seconds` (0: every one, as the
    local stack does at start, when its queues are new), and a job per lane with deliveries PENDING that long;
    returns how many were found and how many re-enqueued."""
    cutoff = now - timedelta(seconds=pending_after_seconds)
    jobs = messages.stale_pending(cutoff, limit)
    if deliveries is not None:
        jobs += deliveries.stale_pending(cutoff, limit)
    if not jobs:
        return 0, 0
    round_id = str(int(now.timestamp()) // SWEEP_ROUND_SECONDS)
    requeued = queue.requeue(jobs, round_id)
    logger.info(
        "sweep: %d PENDING messages older than %d s, %d re-enqueued", len(jobs), pending_after_seconds, requeued
    )
    return len(jobs), requeued
