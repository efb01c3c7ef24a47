"""Settings: defaults, required values, and one clear message naming a bad setting."""

from __future__ import annotations

import pytest

from shared.config import DEVELOPMENT_STORAGE, ConfigError, StorageAccount, load_settings

BASE = {
    "GRAPH_TENANT_ID": "t",
    "GRAPH_CLIENT_ID": "c",
    "KEY_VAULT_URL": "https://vault.example.test",
    "MAIL_DEFAULT_SENDER": "Notifications@Contoso.test",
}


def test_defaults_follow_the_design() -> None:
    settings = load_settings(BASE)
    assert settings.graph_auth_mode == "keyvault"
    assert settings.graph_credential_secret_name == "graph-client-secret"
    assert settings.graph_credential_kind == "secret"
    assert settings.graph_base_url == "https://graph.microsoft.com/v1.0"
    assert settings.azure_authority_host == "https://login.microsoftonline.com"
    assert settings.key_vault_verify_challenge_resource is True
    assert settings.mail_allowed_senders == {"notifications@contoso.test"}
    assert settings.mail_allowed_recipient_domains == {"contoso.test"}  # the senders' own domains
    assert settings.storage == StorageAccount(DEVELOPMENT_STORAGE)
    assert settings.mailbox_digest_schedule == "0 0 7 * * 1-5"
    assert settings.audit_recipients == "hashed"


def test_managed_identity_mode_needs_no_app_registration_or_vault() -> None:
    settings = load_settings({"GRAPH_AUTH_MODE": "managed_identity", "MAIL_DEFAULT_SENDER": "n@contoso.test"})
    assert settings.graph_auth_mode == "managed_identity"


def test_allowed_senders_always_include_the_default_sender() -> None:
    settings = load_settings({**BASE, "MAIL_ALLOWED_SENDERS": "support@contoso.test, Ops@Contoso.test"})
    assert settings.mail_allowed_senders == {"support@contoso.test", "ops@contoso.test", "notifications@contoso.test"}


@pytest.mark.parametrize(
    ("override", "named"),
    [
        ({"MAIL_DEFAULT_SENDER": ""}, "MAIL_DEFAULT_SENDER"),
        ({"MAIL_DEFAULT_SENDER": "not an address"}, "MAIL_DEFAULT_SENDER"),
        ({"GRAPH_TENANT_ID": ""}, "GRAPH_TENANT_ID"),
        ({"KEY_VAULT_URL": "http://vault.example.test"}, "KEY_VAULT_URL"),
        ({"GRAPH_BASE_URL": "graph.microsoft.com"}, "GRAPH_BASE_URL"),
        ({"GRAPH_AUTH_MODE": "password"}, "GRAPH_AUTH_MODE"),
        ({"GRAPH_CREDENTIAL_KIND": "token"}, "GRAPH_CREDENTIAL_KIND"),
        ({"KEY_VAULT_VERIFY_CHALLENGE_RESOURCE": "maybe"}, "KEY_VAULT_VERIFY_CHALLENGE_RESOURCE"),
        ({"MAIL_ALLOWED_SENDERS": "a@contoso.test,nope"}, "MAIL_ALLOWED_SENDERS"),
        ({"MAIL_ALLOWED_RECIPIENT_DOMAINS": "contoso.test,not a domain"}, "MAIL_ALLOWED_RECIPIENT_DOMAINS"),
        ({"AzureWebJobsStorage": "garbage"}, "AzureWebJobsStorage"),
        ({"MAILBOX_DIGEST_SCHEDULE": "0 7 * * 1-5"}, "MAILBOX_DIGEST_SCHEDULE"),
        ({"MAILBOX_DIGEST_SCHEDULE": "0 0 25 * * *"}, "MAILBOX_DIGEST_SCHEDULE.*hour field"),
        ({"ALERT_DIGEST_SCHEDULE": "0 0 * * * MON-XYZ"}, "ALERT_DIGEST_SCHEDULE.*day of week"),
        ({"ALERT_DIGEST_SCHEDULE": "*/0 * * * * *"}, "ALERT_DIGEST_SCHEDULE.*step of 0"),
        ({"AUDIT_RECIPIENTS": "everyone"}, "AUDIT_RECIPIENTS"),
        ({"MAIL_SEND_LEASE_SECONDS": "1"}, "MAIL_SEND_LEASE_SECONDS"),
        ({"MAIL_MAX_MESSAGE_BYTES": "157286401"}, "MAIL_MAX_MESSAGE_BYTES.*157286400"),  # over Graph's 150 MB
        ({"MAIL_MAX_MESSAGE_BYTES": "35MB"}, "MAIL_MAX_MESSAGE_BYTES"),
        ({"MAIL_QUEUE_BLOB_PREFIXES": "exports"}, "MAIL_QUEUE_BLOB_PREFIXES.*not a folder"),  # no trailing /
        ({"MAIL_QUEUE_BLOB_PREFIXES": "exports/,../x/"}, "MAIL_QUEUE_BLOB_PREFIXES"),
        ({"MAIL_API_BLOB_PREFIXES": "forms/"}, "MAIL_API_BLOB_PREFIXES.*forms/"),  # the app's own files
    ],
)
def test_a_bad_setting_fails_with_a_message_naming_it(override: dict[str, str], named: str) -> None:
    with pytest.raises(ConfigError, match=named):
        load_settings({**BASE, **override})


def test_blob_folders_are_read_as_references_and_default_to_none() -> None:
    given = load_settings({**BASE, "MAIL_QUEUE_BLOB_PREFIXES": "exports/, mail-attachments/reports/daily/"})
    assert given.mail_queue_blob_prefixes == ("mail-attachments/exports/", "mail-attachments/reports/daily/")
    assert given.mail_api_blob_prefixes == () == load_settings(BASE).mail_queue_blob_prefixes


def test_an_unresolved_key_vault_reference_is_detected() -> None:
    reference = "@Microsoft.KeyVault(SecretUri=https://v.vault.azure.net/secrets/x/)"
    with pytest.raises(ConfigError, match="GRAPH_CLIENT_ID is an unresolved Key Vault reference"):
        load_settings({**BASE, "GRAPH_CLIENT_ID": reference})


def test_a_relative_notify_config_path_is_relative_to_the_app() -> None:
    from shared.config import APP_ROOT

    assert load_settings(BASE).notify_config == str(APP_ROOT / "config" / "notify.yaml")


def test_storage_is_reached_with_the_managed_identity_when_only_identity_based_settings_are_given() -> None:
    """As the Functions host reads AzureWebJobsStorage__*: the deployment has shared keys off, so the app's
    own Storage clients must sign in with the identity too (found by the deployment checks of issue 14)."""
    by_name = load_settings(
        {
            **BASE,
            "AzureWebJobsStorage__accountName": "stnotifier01",
            "AzureWebJobsStorage__credential": "managedidentity",
            "AzureWebJobsStorage__clientId": "00000000-0000-0000-0000-000000000003",
        }
    ).storage
    assert by_name == StorageAccount(
        None,
        "https://stnotifier01.blob.core.windows.net",
        "https://stnotifier01.queue.core.windows.net",
        "https://stnotifier01.table.core.windows.net",
        "00000000-0000-0000-0000-000000000003",
    )
    by_uris = load_settings(
        {
            **BASE,
            "AzureWebJobsStorage__blobServiceUri": "https://b.example.test/",
            "AzureWebJobsStorage__queueServiceUri": "https://q.example.test",
            "AzureWebJobsStorage__tableServiceUri": "https://t.example.test",
        }
    ).storage
    assert (by_uris.blob_url, by_uris.queue_url, by_uris.table_url, by_uris.client_id) == (
        "https://b.example.test",
        "https://q.example.test",
        "https://t.example.test",
        None,
    )


@pytest.mark.parametrize(
    ("settings", "named"),
    [
        ({"AzureWebJobsStorage__accountName": "Not_An_Account"}, "AzureWebJobsStorage__accountName"),
        ({"AzureWebJobsStorage__queueServiceUri": "https://q.example.test"}, "AzureWebJobsStorage__blobServiceUri"),
        (
            {"AzureWebJobsStorage__accountName": "stx", "AzureWebJobsStorage__credential": "connectionstring"},
            "AzureWebJobsStorage__credential",
        ),
        ({"AzureWebJobsStorage": "just some text"}, "AzureWebJobsStorage"),
    ],
)
def test_a_wrong_storage_setting_is_named(settings: dict[str, str], named: str) -> None:
    with pytest.raises(ConfigError, match=named):
        load_settings({**BASE, **settings})


def test_the_store_signs_in_to_identity_based_storage_with_the_managed_identity() -> None:
    import asyncio

    from shared.store import Store

    account = load_settings(
        {**BASE, "AzureWebJobsStorage__accountName": "stnotifier01", "AzureWebJobsStorage__clientId": "mi-1"}
    ).storage

    async def clients() -> tuple[str, str, str]:
        store = Store(account)
        try:
            queue = store.storage.queue("mail-outbox")
            blob = store.storage.blob_service()
            return queue.url, store.storage._tables.url, f"{blob.url}:{type(queue.credential).__name__}"
        finally:
            await store.close()

    queue_url, table_url, blob = asyncio.run(clients())
    assert queue_url == "https://stnotifier01.queue.core.windows.net/mail-outbox"
    assert table_url.startswith("https://stnotifier01.table.core.windows.net")
    assert blob == "https://stnotifier01.blob.core.windows.net/:ManagedIdentityCredential"


def test_the_largest_mail_is_exchanges_default_35_mib_unless_set_up_to_150_mib() -> None:
    assert load_settings(BASE).mail_max_message_bytes == 35 * 1024 * 1024
    assert load_settings({**BASE, "MAIL_MAX_MESSAGE_BYTES": "157286400"}).mail_max_message_bytes == 150 * 1024 * 1024


def test_the_sending_and_recipient_policy_is_one_rule_of_the_settings() -> None:
    settings = load_settings({**BASE, "MAIL_ALLOWED_RECIPIENT_DOMAINS": "contoso.test", "MAIL_ALLOWED_SENDERS": ""})
    assert settings.may_send_as("Notifications@contoso.test") and not settings.may_send_as("ceo@contoso.test")
    assert settings.may_mail("a@Contoso.test") and not settings.may_mail("a@evil.test")
    assert load_settings({**BASE, "MAIL_ALLOWED_RECIPIENT_DOMAINS": "*"}).may_mail("anyone@anywhere.test")


def test_unset_the_recipient_fence_keeps_mail_in_the_senders_domains_and_star_opens_it() -> None:
    unset = load_settings({**BASE, "MAIL_ALLOWED_SENDERS": "alerts@fabrikam.test"})
    assert unset.may_mail("alice@contoso.test") and unset.may_mail("bob@Fabrikam.test")
    assert not unset.may_mail("alice@contoso.tset")  # a typo stays inside
    assert unset.recipient_fence() == "recipients only in contoso.test, fabrikam.test"
    assert load_settings({**BASE, "MAIL_ALLOWED_RECIPIENT_DOMAINS": ""}).may_mail("alice@contoso.tset") is False
    star = load_settings({**BASE, "MAIL_ALLOWED_RECIPIENT_DOMAINS": " * "})
    assert star.may_mail("alice@contoso.tset")
    assert star.recipient_fence() == "MAIL_ALLOWED_RECIPIENT_DOMAINS=*: any recipient domain"
    with pytest.raises(ConfigError, match="stands alone"):
        load_settings({**BASE, "MAIL_ALLOWED_RECIPIENT_DOMAINS": "*,contoso.test"})


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("MAIL_SEND_LEASE_SECONDS", "²"),
        ("MAIL_SEND_LEASE_SECONDS", "١٢٠"),  # Arabic-Indic digits: int() reads them, a setting must not
        ("ALERT_DIGEST_SCHEDULE", "0 ² * * * *"),
        ("MAILBOX_DIGEST_SCHEDULE", "0 0 7 * * 1-5/²"),
    ],
)
def test_a_number_that_is_not_ascii_digits_is_refused_naming_the_setting(name: str, value: str) -> None:
    with pytest.raises(ConfigError, match=name):
        load_settings({**BASE, name: value})


def test_budget_settings_default_to_exchanges_limits_less_a_margin_and_pools_must_be_allowed_senders() -> None:
    settings = load_settings(BASE)
    assert (settings.budget_messages_per_minute, settings.budget_recipients_per_day) == (25, 9000)
    assert settings.budget_alert_reserve_percent == 20 and settings.mail_sender_pools == ()
    pooled = load_settings(
        {
            **BASE,
            "MAIL_ALLOWED_SENDERS": "a@contoso.test,b@contoso.test",
            "MAIL_SENDER_POOLS": "bulk: a@contoso.test, B@contoso.test; alerts: a@contoso.test",
            "MAIL_PRIORITY_SENDERS": "a@contoso.test",
        }
    )
    assert pooled.sender_pool("bulk") == ("a@contoso.test", "b@contoso.test")
    assert pooled.may_use_alert_lanes(("a@contoso.test",)) and not pooled.may_use_alert_lanes(
        ("a@contoso.test", "b@contoso.test")
    )
    with pytest.raises(
        ConfigError, match=r"MAIL_SENDER_POOLS: x@contoso.test \(pool 'bulk'\) is not in MAIL_ALLOWED_SENDERS"
    ):
        load_settings({**BASE, "MAIL_SENDER_POOLS": "bulk: x@contoso.test"})
    with pytest.raises(ConfigError, match="MAIL_SENDER_POOLS"):
        load_settings({**BASE, "MAIL_SENDER_POOLS": "no colon here"})
    with pytest.raises(ConfigError, match="MAIL_BUDGET_ALERT_RESERVE_PERCENT"):
        load_settings({**BASE, "MAIL_BUDGET_ALERT_RESERVE_PERCENT": "95"})
