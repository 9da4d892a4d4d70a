"""Phones and emails as they are compared: phones in E.164, emails case-folded."""

from __future__ import annotations

from typing import TYPE_CHECKING

import phonenumbers

from chat4all.domain.platforms import definition

if TYPE_CHECKING:
    from chat4all.domain.models import User

PHONE_SEPARATORS = str.maketrans("", "", " ().-")


def normalise_phone(raw: str) -> str:
    """The E.164 form (+5511999990000) of an international number written with or without separators.

    Raises ValueError when it is not a possible international number.
    """
    text = raw.strip().translate(PHONE_SEPARATORS)
    if not text.startswith("+") or not text[1:].isdigit():
        raise ValueError("a phone number is + and the country code, then digits")
    try:
        number = phonenumbers.parse(text, None)
    except phonenumbers.NumberParseException as exc:
        raise ValueError("not an international phone number") from exc
    if not phonenumbers.is_possible_number(number):
        raise ValueError("not a possible phone number for its country code")
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


def email_key(email: str) -> str:
    """How two emails are compared: Unicode case folding, so Ana@Example.COM matches ana@example.com."""
    return email.strip().casefold()


def phones_of(user: User) -> set[str]:
    """The user's phone and the numbers of its identities on platforms whose user ids are phone numbers
    (WhatsApp's), in E.164."""
    phones = {user.phone} if user.phone else set()
    for identity in user.external_identities:
        if definition(identity.platform).user_id_is_phone:
            try:
                phones.add(normalise_phone("+" + identity.platform_user_id.lstrip("+")))
            except ValueError:
                continue
    return phones
