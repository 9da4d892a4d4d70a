"""The short form of `make chaos`: every fault once, one at a time, while messages flow.

It runs `python -m bench.chaos` in a process of its own (a whole platform of its own, killed and restarted
piece by piece) and checks the figures it prints: every 202 a stored message, every accepted message SENT or
FAILED with a reason for each of its recipients (nothing left PENDING), and at the WhatsApp-format server each
delivered exactly once and in `sequence` order per conversation and recipient. Three of the conversations are
GROUPs of an agent and four WhatsApp customers: their messages are checked per recipient (each delivery).
The full run (10,000 messages) is `make chaos` (docs/RELIABILITY.md).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
FAULTS = (
    "kill-RouteFunction,kill-IngestFunction,postgres,mongo,redis,localstack,"
    "platform-kill,platform-500,platform-429,platform-slow"
)
SHORT_FORM = [
    "--messages", "300",
    "--rate", "6",
    "--clients", "4",
    "--conversations", "8",
    "--groups", "3",
    "--group-recipients", "4",
    "--down-seconds", "2",
    "--gap-seconds", "2",
    "--platform-fault-seconds", "5",
    "--drain-timeout", "240",
    "--faults", FAULTS,
]  # fmt: skip


@pytest.fixture(scope="module")
def figures(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    figures_path = tmp_path_factory.mktemp("chaos") / "chaos.json"
    run = subprocess.run(
        [sys.executable, "-m", "bench.chaos", *SHORT_FORM, "--json", str(figures_path)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert figures_path.is_file(), run.stdout + run.stderr[-5000:]
    print(run.stdout)
    return dict(json.loads(figures_path.read_text()))


def test_every_accepted_message_is_stored_and_ends_sent_or_failed_with_a_reason(figures: dict[str, Any]) -> None:
    faults = {fault["name"]: fault["detail"] for fault in figures["faults"]}
    assert set(faults) == set(FAULTS.split(",")), faults
    for name, detail in faults.items():
        assert "not injected" not in detail and "none killed" not in detail, (name, detail)
    assert figures["drained"], figures
    assert figures["accepted"] == 300 and figures["client_gave_up"] == figures["rejected"] == 0, figures
    # per recipient: a one-to-one message has one, a GROUP message one per customer of its group
    assert figures["group_messages"] > 0, figures
    assert figures["recipients"] == figures["accepted"] + 3 * figures["group_messages"], figures
    assert figures["delivered"] + figures["failed"] == figures["recipients"], figures
    holes = ("lost", "stuck_pending", "failed_without_reason", "failed_but_delivered", "sent_but_not_at_platform")
    for hole in (*holes, "missing_from_history"):
        assert figures[hole] == 0, (hole, figures)


def test_every_recipient_got_each_delivered_message_once_and_in_order(figures: dict[str, Any]) -> None:
    assert figures["sent_twice"] == 0, figures["examples"]
    assert figures["out_of_order"] == 0, figures["examples"]
