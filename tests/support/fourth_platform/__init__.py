"""A fourth platform, Pigeon, added from outside the code: its connector and definition (`connector`, the module a
deployment names in CHAT4ALL_CHANNEL_MODULES) and a local server speaking its API (`fake`). Nothing under
functions/, layers/ or template.yaml names it (tests/integration/test_fourth_platform.py checks)."""
