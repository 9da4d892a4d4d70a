"""The MongoDB client finds a server that is down within a second, unless the URI says otherwise."""

from __future__ import annotations

from chat4all.adapters.mongo import DEFAULT_TIMEOUTS_MS, connect


def test_a_down_server_is_found_out_quickly_by_default() -> None:
    db = connect("mongodb://127.0.0.1:9/chat4all?directConnection=true")
    options = db.client.options
    assert options.server_selection_timeout * 1000 == DEFAULT_TIMEOUTS_MS["serverSelectionTimeoutMS"] < 1000
    assert options.pool_options.connect_timeout * 1000 == DEFAULT_TIMEOUTS_MS["connectTimeoutMS"]
    assert options.pool_options.socket_timeout is not None
    db.client.close()


def test_timeouts_the_uri_sets_are_kept() -> None:
    db = connect("mongodb://127.0.0.1:9/chat4all?directConnection=true&serverSelectionTimeoutMS=4000")
    assert db.client.options.server_selection_timeout == 4.0
    db.client.close()
