"""Strict JSON for strangers' bodies, and the contact forms link suggestions compare."""

from __future__ import annotations

import pytest

from chat4all.domain.contact import email_key, normalise_phone
from chat4all.domain.errors import BadRequestError, ValidationFailedError
from chat4all.domain.untrusted import loads_untrusted, refuse_nul


@pytest.mark.parametrize(
    "raw",
    [b"NaN", b'{"a": Infinity}', b"[-Infinity]", b'{"a": 1e400}', b"-1e999", b"9" * 5000, b"[" * 33 + b"]" * 33,
     b"[" * 100_000, b"", b"  ", b"{", b"\xff"],
)  # fmt: skip
def test_refused_as_400(raw: bytes) -> None:
    with pytest.raises(BadRequestError):
        loads_untrusted(raw)


def test_ordinary_json_and_strings_with_brackets() -> None:
    assert loads_untrusted(b'{"a": [1, 2.5, "[[[{{{"], "b": {"c": null}}') == {
        "a": [1, 2.5, "[[[{{{"],
        "b": {"c": None},
    }
    assert loads_untrusted("[" * 32 + "]" * 32) is not None
    assert loads_untrusted(b'{"big": 1e308}') == {"big": 1e308}


def test_nul_is_refused_with_the_fields_that_carry_it() -> None:
    refuse_nul({"ok": "fine", "list": ["x"]})
    with pytest.raises(ValidationFailedError) as refused:
        refuse_nul({"name": "a\x00", "meta": {"deep": ["ok", "b\x00"]}, "k\x00": 1})
    assert {e.field for e in refused.value.errors} == {"name", "meta.deep[1]", "body"}


@pytest.mark.parametrize(
    ("raw", "e164"),
    [("+55 (11) 99999-0000", "+5511999990000"), ("+1.415.555.2671", "+14155552671"), ("+4930123456", "+4930123456")],
)
def test_phones_are_normalised_to_e164(raw: str, e164: str) -> None:
    assert normalise_phone(raw) == e164


@pytest.mark.parametrize("raw", ["5511999990000", "+0 11 999", "+1", "+55 11 abc", "++5511999990000"])
def test_impossible_phones_are_refused(raw: str) -> None:
    with pytest.raises(ValueError, match="number"):
        normalise_phone(raw)


def test_emails_are_case_folded() -> None:
    assert email_key(" Ana@Example.COM ") == email_key("ana@example.com")
    assert email_key("STRASSE@x.de") == email_key("straße@x.de")
