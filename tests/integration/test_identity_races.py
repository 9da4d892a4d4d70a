"""Identity guarantees under concurrent clients: one owner per platform account, an unbroken audit chain per
user, and a revocation that no request started afterwards gets past."""

from __future__ import annotations

import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

import httpx

if TYPE_CHECKING:
    from devstack.stack import LocalPlatform
    from tests.integration.conftest import Api

CLIENTS = 8


def test_one_platform_account_is_linked_to_one_user_whoever_races(api: Api, platform: LocalPlatform) -> None:
    users = [api.created("/v1/users", {"display_name": f"Racer {n}", "user_type": "CUSTOMER"}) for n in range(CLIENTS)]
    account = str(uuid.uuid4().int)[:12]
    barrier = threading.Barrier(CLIENTS)

    def link(user: dict[str, Any]) -> int:
        with httpx.Client(base_url=platform.api_url, timeout=60) as client:
            barrier.wait()
            response = client.post(
                f"/v1/users/{user['user_id']}/identities",
                json={"platform": "TELEGRAM", "platform_user_id": account},
                headers={"Authorization": f"Bearer {api.admin_key}"},
            )
            return response.status_code

    with ThreadPoolExecutor(CLIENTS) as pool:
        statuses = sorted(pool.map(link, users))
    assert statuses == [201] + [409] * (CLIENTS - 1)
    owners = [u for u in users if api.call("GET", f"/v1/users/{u['user_id']}").json()["external_identities"]]
    assert len(owners) == 1
    linked = api.call("GET", "/v1/audit-log", params={"entity_id": owners[0]["user_id"]}).json()["items"]
    assert [e["action"] for e in linked] == ["identity.linked", "user.created"]


def test_concurrent_changes_to_one_user_leave_an_unbroken_audit_chain(api: Api, platform: LocalPlatform) -> None:
    user = api.created("/v1/users", {"display_name": "Name 0", "user_type": "CUSTOMER"})
    barrier = threading.Barrier(CLIENTS)

    def rename(n: int) -> int:
        with httpx.Client(base_url=platform.api_url, timeout=60) as client:
            barrier.wait()
            return client.patch(
                f"/v1/users/{user['user_id']}",
                json={"display_name": f"Name {n + 1}"},
                headers={"Authorization": f"Bearer {api.admin_key}"},
            ).status_code

    with ThreadPoolExecutor(CLIENTS) as pool:
        assert set(pool.map(rename, range(CLIENTS))) == {200}
    entries = api.call("GET", "/v1/audit-log", params={"entity_id": user["user_id"]}).json()["items"]
    updates = [e for e in reversed(entries) if e["action"] == "user.updated"]  # oldest first
    assert len(updates) == CLIENTS
    names = ["Name 0"] + [e["after"]["display_name"] for e in updates]
    # each change starts from what the previous one left: no lost update, no entry out of step with the row
    assert [e["before"]["display_name"] for e in updates] == names[:-1]
    assert sorted(names[1:]) == sorted(f"Name {n + 1}" for n in range(CLIENTS))
    assert api.call("GET", f"/v1/users/{user['user_id']}").json()["display_name"] == names[-1]


def test_no_request_started_after_a_revocation_gets_through(api: Api, platform: LocalPlatform) -> None:
    agent = api.created("/v1/users", {"display_name": "Soon Revoked", "user_type": "AGENT"})
    key = api.created("/v1/api-keys", {"name": "r", "role": "agent", "user_id": agent["user_id"]})
    revoked_at: list[float] = []
    results: list[tuple[float, int]] = []
    lock = threading.Lock()
    stop = threading.Event()

    def hammer() -> None:
        with httpx.Client(base_url=platform.api_url, timeout=60) as client:
            while not stop.is_set():
                started = time.monotonic()
                status = client.get(
                    f"/v1/users/{agent['user_id']}", headers={"Authorization": f"Bearer {key['api_key']}"}
                ).status_code
                with lock:
                    results.append((started, status))

    threads = [threading.Thread(target=hammer) for _ in range(4)]
    for thread in threads:
        thread.start()
    try:
        deadline = time.monotonic() + 30
        while not any(status == 200 for _, status in list(results)):
            assert time.monotonic() < deadline, "the key never worked"
            time.sleep(0.05)
        assert api.call("DELETE", f"/v1/api-keys/{key['key_id']}").status_code == 204
        revoked_at.append(time.monotonic())
        while sum(1 for started, _ in list(results) if started > revoked_at[0]) < 20:
            assert time.monotonic() < deadline + 30, "no requests after the revocation"
            time.sleep(0.05)
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    after = [status for started, status in results if started > revoked_at[0]]
    assert set(after) == {401}
    assert {status for _, status in results} == {200, 401}
