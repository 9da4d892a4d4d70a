"""The short form of `make chaos`: every fault once, one at a time, while messages flow; nothing lost or doubled.

It runs `python -m bench.chaos` in a process of its own (a whole platform of its own, killed and restarted
piece by piece) and checks the figures it prints: every accepted message delivered exactly once and in
`sequence` order per conversation at the WhatsApp-format server, or FAILED with a reason; every 202 a stored
message; nothing left PENDING. The full run (10,000 messages) is `make chaos` and docs/RELIABILITY.md.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
SHORT_FORM = [
    "--messages", "300",
    "--rate", "6",
    "--clients", "4",
    "--conversations", "8",
    "--down-seconds", "2",
    "--gap-seconds", "2",
    "--platform-fault-seconds", "5",
    "--drain-timeout", "240",
    "--faults",
    "kill-RouteFunction,kill-IngestFunction,postgres,mongo,redis,localstack,"
    "platform-kill,platform-500,platform-429,platform-slow",
]  # fmt: skip


def test_every_accepted_message_ends_sent_once_in_order_or_failed_whatever_dies(tmp_path: Path) -> None:
    figures_path = tmp_path / "chaos.json"
    run = subprocess.run(
        [sys.executable, "-m", "bench.chaos", *SHORT_FORM, "--json", str(figures_path)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert figures_path.is_file(), run.stdout + run.stderr[-5000:]
    figures = json.loads(figures_path.read_text())
    print(run.stdout)
    faults = {fault["name"]: fault["detail"] for fault in figures["faults"]}
    assert set(faults) == set(SHORT_FORM[-1].split(",")), faults
    for name, detail in faults.items():
        assert "not injected" not in detail and "none killed" not in detail, (name, detail)
    assert figures["drained"], figures
    assert figures["accepted"] == 300 and figures["client_gave_up"] == 0, figures
    assert figures["delivered"] + figures["failed"] == figures["accepted"], figures
    for hole in ("lost", "stuck_pending", "failed_without_reason", "failed_but_delivered", "sent_but_not_at_platform"):
        assert figures[hole] == 0, (hole, figures)
    assert figures["sent_twice"] == 0, figures
    assert figures["out_of_order"] == 0, figures
    assert run.returncode == 0, run.stderr[-5000:]
