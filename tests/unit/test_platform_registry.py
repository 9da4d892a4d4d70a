"""A platform is a registered name with one definition: the built-ins, and modules a deployment names."""

from __future__ import annotations

import dataclasses
import pickle

import pytest
from pydantic import ValidationError

from chat4all.api.schemas import CreateChannelRequest
from chat4all.channels import registry
from chat4all.channels.whatsapp import WhatsAppConnector
from chat4all.domain.credentials import channel_keys, webhook_secret_digest
from chat4all.domain.models import Platform, shown_platform_message_id
from chat4all.domain.platforms import PlatformDefinition, UnknownPlatformError


def test_the_built_ins_are_registered_and_each_name_is_one_object() -> None:
    assert {"WHATSAPP", "TELEGRAM", "INSTAGRAM"} <= set(registry.names())
    assert Platform("TELEGRAM") is Platform.TELEGRAM
    assert pickle.loads(pickle.dumps(Platform.WHATSAPP)) is Platform.WHATSAPP
    assert (Platform.INSTAGRAM.value, f"{Platform.INSTAGRAM}", Platform.INSTAGRAM == "INSTAGRAM") == (
        "INSTAGRAM",
        "INSTAGRAM",
        True,
    )
    with pytest.raises(ValueError, match="not a platform"):
        Platform("CROW")


def test_a_request_naming_an_unknown_platform_is_refused_by_its_model() -> None:
    request = CreateChannelRequest.model_validate({"platform": "TELEGRAM", "name": "x", "credentials": {}})
    assert request.platform is Platform.TELEGRAM
    with pytest.raises(ValidationError, match="not a platform"):
        CreateChannelRequest.model_validate({"platform": "CROW", "name": "x", "credentials": {}})


def test_webhook_paths_are_the_lower_case_names() -> None:
    found = registry.by_webhook_path("whatsapp")
    assert found is not None and found.platform is Platform.WHATSAPP and found.subscription_check
    assert registry.by_webhook_path("WHATSAPP") is None
    assert registry.by_webhook_path("crow") is None
    telegram = registry.by_webhook_path("telegram")
    assert telegram is not None and not telegram.subscription_check


def test_the_definitions_say_what_the_code_asked_per_platform() -> None:
    telegram = {"bot_token": "7000001:" + "a" * 35, "secret_token": "s3cret"}
    assert channel_keys(Platform.TELEGRAM, telegram) == ("7000001", webhook_secret_digest("s3cret"))
    whatsapp = {"access_token": "t", "phone_number_id": "106540352242922", "app_secret": "a", "verify_token": "v"}
    assert channel_keys(Platform.WHATSAPP, whatsapp) == ("106540352242922", None)
    assert [registry.definition(p).rate_limit for p in ("WHATSAPP", "TELEGRAM", "INSTAGRAM")] == [80, 30, 300]
    assert registry.definition(Platform.WHATSAPP).user_id_is_phone
    assert not registry.definition(Platform.INSTAGRAM).user_id_is_phone
    assert shown_platform_message_id(Platform.TELEGRAM, "7000001:123:42") == "42"
    assert shown_platform_message_id(Platform.WHATSAPP, "wamid.1") == "wamid.1"
    with pytest.raises(UnknownPlatformError):
        registry.definition("CROW")


def test_registering_checks_the_name_its_connector_and_a_second_definition() -> None:
    whatsapp = registry.definition(Platform.WHATSAPP)
    assert registry.register(whatsapp) is whatsapp  # the same definition again changes nothing
    with pytest.raises(ValueError, match="registered already"):
        registry.register(dataclasses.replace(whatsapp, rate_limit=1))
    with pytest.raises(ValueError, match="connector"):
        registry.register(dataclasses.replace(whatsapp, name="CROW"))
    with pytest.raises(ValueError, match="platform name"):
        registry.register(dataclasses.replace(whatsapp, name="crow!"))
    assert "CROW" not in registry.names()
    assert isinstance(whatsapp, PlatformDefinition) and whatsapp.connector is WhatsAppConnector


def test_a_deployment_adds_a_platform_by_naming_its_module() -> None:
    names = registry.load_modules({registry.MODULES_VARIABLE: " tests.support.fourth_platform.connector ,"})
    assert "PIGEON" in names
    pigeon = registry.definition("PIGEON")
    assert (pigeon.webhook_path, pigeon.api_base_variable, Platform("PIGEON").value) == (
        "pigeon",
        "PIGEON_API_BASE",
        "PIGEON",
    )
    connector = pigeon.make_connector("http://127.0.0.1:1/v1")
    assert connector.account_ids({"account": "acct-1", "events": []}) == ["acct-1"]
