"""The deployment, checked offline: the Bicep in infra/ (parsed with pycep-parser), the app settings it gives
against the ones the app reads, the security properties and roles, the admin scripts, and .funcignore.

Azure itself cannot be reached from here; `make infra-check` adds checkov over infra/ and shellcheck over
scripts/. Facts below come from Microsoft's documentation, cited where they are used.
"""

from __future__ import annotations

import ast
import os
import re
import shutil
import subprocess
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pathspec
import pytest
from pycep import BicepParser

from shared import config

from .helpers import documentation

ROOT = Path(__file__).resolve().parent.parent
INFRA = ROOT / "infra"
SCRIPTS = ROOT / "scripts"

Bicep = dict[str, Any]


def parse(text: str) -> Bicep:
    return dict(BicepParser().parse(text=text))


def bicep(name: str) -> Bicep:
    return parse((INFRA / name).read_text())


# --- helpers over pycep's tree ---------------------------------------------------------------------------


def accessor_path(node: Any) -> str:
    """`core.outputs.identityId` for pycep's nested property accessors; the string itself for a plain name."""
    if isinstance(node, str):
        return node
    if isinstance(node, dict) and "operator" in node and node["operator"]["type"] == "property_accessor":
        operands = node["operator"]["operands"]
        return f"{accessor_path(operands['operand_1'])}.{accessor_path(operands['operand_2'])}"
    if isinstance(node, dict) and "function" in node:
        return f"{node['function']['type']}()"
    return repr(node)


def resources_of(tree: Bicep, type_: str) -> dict[str, Any]:
    return {name: r for name, r in tree["resources"].items() if r["type"] == type_}


def the_resource(tree: Bicep, type_: str) -> Any:
    found = list(resources_of(tree, type_).values())
    assert len(found) == 1, f"expected one {type_}, found {len(found)}"
    return found[0]


def walk(node: Any) -> Iterator[Any]:
    yield node
    if isinstance(node, dict):
        for value in node.values():
            yield from walk(value)
    elif isinstance(node, list):
        for value in node:
            yield from walk(value)


# --- 1. the Bicep parses and hangs together ------------------------------------------------------------


def test_every_bicep_file_parses_and_main_deploys_the_other_two_as_local_modules() -> None:
    main = bicep("main.bicep")
    modules = {m["detail"]["path"] for m in main["modules"].values()}
    assert modules == {"core.bicep", "app.bicep"}
    assert all(m["type"] == "local" for m in main["modules"].values()), "no registry modules: checkable offline"
    assert main["globals"]["scope"]["value"] == "subscription"
    assert {path.name for path in INFRA.glob("*.bicep")} == {"main.bicep", *modules}
    for path in modules:
        assert bicep(path)["resources"], f"{path} declares no resource"


def test_every_module_parameter_main_passes_is_declared_by_the_module_and_every_required_one_is_passed() -> None:
    main = bicep("main.bicep")
    for module in main["modules"].values():
        declared = bicep(module["detail"]["path"])["parameters"]
        passed = set(module["config"]["params"])
        assert passed <= set(declared), f"{module['detail']['path']}: unknown {passed - set(declared)}"
        required = {name for name, p in declared.items() if p["default"] is None}
        assert required <= passed, f"{module['detail']['path']}: missing {required - passed}"


def test_the_azd_parameters_file_sets_only_declared_parameters_from_azd_environment_values() -> None:
    import json

    values = json.loads((INFRA / "main.parameters.json").read_text())["parameters"]
    declared = bicep("main.bicep")["parameters"]
    assert set(values) <= set(declared)
    required = {name for name, spec in declared.items() if spec["default"] is None}
    assert required <= set(values), "every required parameter comes from the azd environment"
    for name, spec in values.items():
        assert re.fullmatch(r"\$\{[A-Z_]+(=[\w.-]*)?\}", spec["value"]), f"{name}: {spec['value']}"


def test_azure_yaml_names_the_infra_and_one_python_function_service() -> None:
    import yaml

    azure = yaml.safe_load((ROOT / "azure.yaml").read_text())
    assert azure["infra"] == {"provider": "bicep", "path": "infra", "module": "main"}
    assert azure["services"] == {"api": {"project": ".", "language": "python", "host": "function"}}
    # azd finds the app to deploy by this tag (azd-service-name = the service's name)
    site = the_resource(bicep("app.bicep"), "Microsoft.Web/sites")
    assert "'azd-service-name': 'api'" in (INFRA / "app.bicep").read_text()
    assert site["config"]["kind"] == "functionapp,linux"


def test_azd_offers_only_the_flex_consumption_regions_and_the_deploy_guide_deploys_to_one_of_them() -> None:
    location = bicep("main.bicep")["parameters"]["location"]
    allowed = location["decorators"]
    [regions] = [d["argument"] for d in allowed if d["type"] == "allowed"]
    assert len(regions) >= 20 and all(re.fullmatch(r"[a-z0-9]+", r) for r in regions)
    assert {"westeurope", "northeurope", "swedencentral", "eastus", "eastus2"} <= set(regions)
    guide_region = re.search(r"azd env set AZURE_LOCATION (\w+)", "\n".join(documentation().values()))
    assert guide_region is not None and guide_region.group(1) in regions
    assert "list-flexconsumption-locations" in MAIN_TEXT  # where the list comes from, cited beside it


def test_the_postprovision_hook_runs_an_existing_script_that_says_the_next_admin_step_and_never_fails() -> None:
    import yaml

    hooks = yaml.safe_load((ROOT / "azure.yaml").read_text())["hooks"]["postprovision"]
    for platform in ("posix", "windows"):
        script = ROOT / hooks[platform]["run"].split()[-1]
        assert script == SCRIPTS / "postprovision.sh" and script.is_file(), platform
        assert hooks[platform]["continueOnError"] is True, platform  # a hook never undoes a deployment

    def hook(**env: str) -> subprocess.CompletedProcess[str]:
        # no az and no azd on this PATH: the hook reads azd's values from its environment, as azd hands them over
        return subprocess.run(
            ["bash", str(SCRIPTS / "postprovision.sh")],
            capture_output=True,
            text=True,
            env={"PATH": "/usr/bin:/bin", "HOME": os.environ.get("HOME", "/tmp"), **env},
            timeout=30,
        )

    first = hook(GRAPH_CLIENT_ID="", AZURE_FUNCTION_APP_URL="https://func-x.azurewebsites.net")
    assert first.returncode == 0, first.stderr
    assert "az login && scripts/entra-app.sh --digests" in first.stdout
    assert "azd env set GRAPH_CLIENT_ID <the appId it prints> && azd provision" in first.stdout
    assert "./scripts/exchange-rbac.ps1 -AppId <appId>" in first.stdout
    assert "curl https://func-x.azurewebsites.net/api/health" in first.stdout
    asked = hook(GRAPH_CLIENT_ID="", ADMIN_STEPS="run")  # without az it cannot run step 1: it prints it
    assert asked.returncode == 0 and "az login && scripts/entra-app.sh --digests" in asked.stdout
    done = hook(GRAPH_CLIENT_ID="11111111-2222-3333-4444-555555555555")
    assert "step 1 (Entra): done" in done.stdout and "entra-app.sh" not in done.stdout
    assert "-AppId 11111111-2222-3333-4444-555555555555" in done.stdout
    identity = hook(GRAPH_AUTH_MODE="managed_identity")
    assert "scripts/entra-app.sh --mode managed_identity --digests" in identity.stdout
    assert "GRAPH_CLIENT_ID" not in identity.stdout


# --- 2. app settings: the Bicep against what the app and the host read -----------------------------------

# Settings the Functions host and platform read, which the app's code does not (Microsoft Learn: "App
# settings reference for Azure Functions"; "Azure Functions developer guide", connecting to host storage
# with an identity; "Microsoft Entra authentication for Application Insights").
HOST_SETTINGS = {"APPLICATIONINSIGHTS_CONNECTION_STRING", "APPLICATIONINSIGHTS_AUTHENTICATION_STRING"}
# An identity-based connection named X is X__accountName or X__<service>ServiceUri, with __credential and
# __clientId (same guide).
IDENTITY_CONNECTION_SUFFIXES = {
    "accountName",
    "blobServiceUri",
    "queueServiceUri",
    "tableServiceUri",
    "credential",
    "clientId",
}
# Flex Consumption refuses or ignores these (Microsoft Learn, "App settings reference for Azure Functions",
# Flex Consumption plan deprecations: the runtime lives in functionAppConfig, the package in its blob
# container, the build is remote); no TZ: timers run in UTC there.
FORBIDDEN_ON_FLEX = {
    "FUNCTIONS_WORKER_RUNTIME",
    "FUNCTIONS_EXTENSION_VERSION",
    "SCM_DO_BUILD_DURING_DEPLOYMENT",
    "ENABLE_ORYX_BUILD",
    "WEBSITE_RUN_FROM_PACKAGE",
    "WEBSITE_CONTENTSHARE",
    "WEBSITE_CONTENTAZUREFILECONNECTIONSTRING",
    "WEBSITE_TIME_ZONE",
    "TZ",
    "AzureWebJobsDashboard",
}


class RecordingEnvironment(Mapping[str, str]):
    """An environment that remembers every name the app looks up."""

    def __init__(self, values: dict[str, str]) -> None:
        self.values = values
        self.read: set[str] = set()

    def __getitem__(self, name: str) -> str:
        self.read.add(name)
        return self.values[name]

    def get(self, name: str, default: Any = None) -> Any:
        self.read.add(name)
        return self.values.get(name, default)

    def __contains__(self, name: object) -> bool:
        if isinstance(name, str):
            self.read.add(name)
        return name in self.values

    def __iter__(self) -> Iterator[str]:
        return iter(self.values)

    def __len__(self) -> int:
        return len(self.values)


def settings_the_app_reads() -> set[str]:
    """Every setting shared/config.py reads, found by running it (in both auth modes) on a recording
    environment: a setting added there shows up here without touching this test."""
    read: set[str] = set()
    minimal = {
        "MAIL_DEFAULT_SENDER": "notifications@contoso.test",
        "GRAPH_TENANT_ID": "00000000-0000-0000-0000-000000000001",
        "GRAPH_CLIENT_ID": "00000000-0000-0000-0000-000000000002",
        "KEY_VAULT_URL": "https://kv-example.vault.azure.net",
    }
    for mode in ("keyvault", "managed_identity"):
        env = RecordingEnvironment({**minimal, "GRAPH_AUTH_MODE": mode})
        config.load_settings(env)
        read |= env.read
    return read


def settings_the_bindings_reference(root: Path = ROOT) -> set[str]:
    """`%SETTING%` binding expressions (timer schedules; whole string constants anywhere in the deployed code,
    since function_app.py may take them from a table) and the `connection=` names of function_app.py's
    triggers: the host resolves both from app settings."""
    names = set()
    for path in [root / "function_app.py", *sorted((root / "shared").rglob("*.py"))]:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                if expression := re.fullmatch(r"%([A-Za-z_]\w*)%", node.value):
                    names.add(expression.group(1))
            elif isinstance(node, ast.keyword) and node.arg == "connection" and isinstance(node.value, ast.Constant):
                names.add(str(node.value.value))
    return names


def bicep_app_settings(main_text: str) -> set[str]:
    return set(parse(main_text)["variables"]["appSettings"]["value"])


def settings_problems(main_text: str) -> tuple[set[str], set[str]]:
    """(settings the app needs that the Bicep does not give, settings the Bicep gives that nobody reads)."""
    given = bicep_app_settings(main_text)
    needed = settings_the_app_reads() | settings_the_bindings_reference()

    def provided(name: str) -> bool:
        # a connection is given by its name or by its identity-based form (`X__accountName` stands in for
        # the alternatives the app also reads, `X__blobServiceUri` and the rest)
        connection = name.partition("__")[0]
        return name in given or any(key.startswith(f"{connection}__") for key in given)

    def known(key: str) -> bool:
        base, _, suffix = key.partition("__")
        if suffix:
            return base in needed and suffix in IDENTITY_CONNECTION_SUFFIXES
        return key in needed or key in HOST_SETTINGS

    return {name for name in needed if not provided(name)}, {key for key in given if not known(key)}


MAIN_TEXT = (INFRA / "main.bicep").read_text()


def test_the_bicep_gives_every_setting_the_app_reads_and_none_it_does_not() -> None:
    missing, unknown = settings_problems(MAIN_TEXT)
    assert missing == set(), f"add to appSettings in infra/main.bicep: {sorted(missing)}"
    assert unknown == set(), f"infra/main.bicep sets what nothing reads: {sorted(unknown)}"


def test_the_settings_check_reads_the_app_itself_so_a_setting_the_bicep_lacks_is_reported() -> None:
    # the list comes from running shared/config.py: it has the settings docs/configuration.md documents
    assert {
        "MAIL_DEFAULT_SENDER",
        "GRAPH_AUTH_MODE",
        "AUDIT_RECIPIENTS",
        "MAIL_SEND_LEASE_SECONDS",
        "ALERT_DIGEST_SCHEDULE",
        "DIGEST_SCHEDULE_GRACE_MINUTES",
    } <= settings_the_app_reads()
    assert {"AzureWebJobsStorage"} <= settings_the_bindings_reference()
    without = "\n".join(line for line in MAIN_TEXT.splitlines() if not line.strip().startswith("AUDIT_RECIPIENTS:"))
    assert settings_problems(without) == ({"AUDIT_RECIPIENTS"}, set())
    without_storage = "\n".join(
        line for line in MAIN_TEXT.splitlines() if not line.strip().startswith("AzureWebJobsStorage__")
    )
    missing_storage = settings_problems(without_storage)[0]
    assert "AzureWebJobsStorage" in missing_storage
    assert {name.partition("__")[0] for name in missing_storage} == {"AzureWebJobsStorage"}
    with_stray = MAIN_TEXT.replace("  AUDIT_RECIPIENTS:", "  AUDIT_RECIPIENT: 'x'\n  AUDIT_RECIPIENTS:")
    assert settings_problems(with_stray) == (set(), {"AUDIT_RECIPIENT"})


def test_no_setting_flex_consumption_refuses_and_host_storage_is_reached_through_the_identity() -> None:
    given = bicep_app_settings(MAIN_TEXT)
    assert given & FORBIDDEN_ON_FLEX == set()
    assert "AzureWebJobsStorage" not in given, "a connection string would need the shared keys that are off"
    values = parse(MAIN_TEXT)["variables"]["appSettings"]["value"]
    assert values["AzureWebJobsStorage__credential"] == "managedidentity"
    assert accessor_path(values["AzureWebJobsStorage__accountName"]) == "core.outputs.storageAccountName"
    assert accessor_path(values["AzureWebJobsStorage__clientId"]) == "core.outputs.identityClientId"
    assert accessor_path(values["AZURE_CLIENT_ID"]) == "core.outputs.identityClientId"
    assert values["APPLICATIONINSIGHTS_AUTHENTICATION_STRING"] == (
        "ClientId=${core.outputs.identityClientId};Authorization=AAD"
    )
    assert accessor_path(values["KEY_VAULT_URL"]) == "core.outputs.vaultUri"
    assert values["KEY_VAULT_VERIFY_CHALLENGE_RESOURCE"] == "true"


def test_the_app_reaches_its_own_storage_with_the_identity_based_settings_the_bicep_gives() -> None:
    deployed = config.load_settings(
        {
            "MAIL_DEFAULT_SENDER": "notifications@contoso.com",
            "GRAPH_TENANT_ID": "00000000-0000-0000-0000-000000000001",
            "GRAPH_CLIENT_ID": "00000000-0000-0000-0000-000000000002",
            "KEY_VAULT_URL": "https://kv-example.vault.azure.net",
            "AzureWebJobsStorage__accountName": "stexample",
            "AzureWebJobsStorage__credential": "managedidentity",
            "AzureWebJobsStorage__clientId": "00000000-0000-0000-0000-000000000003",
        }
    )
    assert deployed.storage == config.StorageAccount(
        None,
        "https://stexample.blob.core.windows.net",
        "https://stexample.queue.core.windows.net",
        "https://stexample.table.core.windows.net",
        "00000000-0000-0000-0000-000000000003",
    )


def test_the_bicep_defaults_are_the_apps_own_defaults() -> None:
    parameters = parse(MAIN_TEXT)["parameters"]
    defaults = config.load_settings(
        {"MAIL_DEFAULT_SENDER": "n@contoso.test", "GRAPH_TENANT_ID": "t", "GRAPH_CLIENT_ID": "c",
         "KEY_VAULT_URL": "https://kv-example.vault.azure.net"}
    )  # fmt: skip
    assert parameters["graphAuthMode"]["default"] == defaults.graph_auth_mode
    assert parameters["graphCredentialSecretName"]["default"] == defaults.graph_credential_secret_name
    assert parameters["graphCredentialKind"]["default"] == defaults.graph_credential_kind
    assert parameters["graphBaseUrl"]["default"] == defaults.graph_base_url
    assert parameters["alertDigestSchedule"]["default"] == defaults.alert_digest_schedule
    assert parameters["mailboxDigestSchedule"]["default"] == defaults.mailbox_digest_schedule
    assert parameters["auditRecipients"]["default"] == defaults.audit_recipients
    assert parameters["mailSendLeaseSeconds"]["default"] == defaults.send_lease_seconds
    assert parameters["mailMaxMessageBytes"]["default"] == defaults.mail_max_message_bytes
    assert parameters["mailBudgetMessagesPerMinute"]["default"] == defaults.budget_messages_per_minute
    assert parameters["mailBudgetRecipientsPerDay"]["default"] == defaults.budget_recipients_per_day
    assert parameters["mailBudgetAlertReservePercent"]["default"] == defaults.budget_alert_reserve_percent
    assert str(config.APP_ROOT / parameters["notifyConfig"]["default"]) == defaults.notify_config
    assert parameters["mailDefaultSender"]["default"] is None, "azd asks for it: no safe default exists"


# --- 3. security properties ----------------------------------------------------------------------------

CORE = bicep("core.bicep")
APP = bicep("app.bicep")
QUEUE_MESSAGE_LIFETIME_DAYS = 7  # Azure Storage queues keep a message 7 days unless told otherwise; the app does not


def test_storage_allows_no_shared_key_no_anonymous_blob_and_only_https_with_tls_1_2() -> None:
    storage = the_resource(CORE, "Microsoft.Storage/storageAccounts")["config"]["properties"]
    assert storage["allowSharedKeyAccess"] is False
    assert storage["defaultToOAuthAuthentication"] is True
    assert storage["allowBlobPublicAccess"] is False
    assert storage["supportsHttpsTrafficOnly"] is True
    assert storage["minimumTlsVersion"] == "TLS1_2"
    container = the_resource(CORE, "Microsoft.Storage/storageAccounts/blobServices/containers")
    assert container["config"]["properties"]["publicAccess"] == "None"


def test_storage_removes_attachment_blobs_no_mail_will_name_and_nothing_else() -> None:
    """Orphaned attachment blobs (a form whose instance died before its enqueue) go after 14 days untouched:
    only in the app's attachment container, and later than any mail still queued could need them."""
    from shared.routes import MAIL_ATTACHMENTS

    policy = the_resource(CORE, "Microsoft.Storage/storageAccounts/managementPolicies")["config"]
    assert policy["parent"] == "storage" and policy["name"] == "default"
    (rule,) = policy["properties"]["policy"]["rules"]
    assert rule["enabled"] is True and rule["type"] == "Lifecycle"
    assert rule["definition"]["filters"] == {"blobTypes": ["blockBlob"], "prefixMatch": [f"{MAIL_ATTACHMENTS}/"]}
    days = rule["definition"]["actions"]["baseBlob"]["delete"]["daysAfterModificationGreaterThan"]
    assert days > QUEUE_MESSAGE_LIFETIME_DAYS


def test_the_deployment_makes_every_queue_of_the_app_so_producers_can_send_before_its_first_run() -> None:
    """The app makes a missing queue only when it first sends a message itself; a producer's first message to
    `mail-outbox` or `alerts-inbox` (and a role scoped to that queue) needs the queue to exist already."""
    from shared.store.storage import APP_QUEUES

    queues = the_resource(CORE, "Microsoft.Storage/storageAccounts/queueServices/queues")
    service = the_resource(CORE, "Microsoft.Storage/storageAccounts/queueServices")["config"]
    assert service["parent"] == "storage" and service["name"] == "default"
    loop = queues["config"]  # one queue resource per name of the `appQueues` array
    assert loop["loop_type"]["detail"] == {"item_name": "name", "array_name": "appQueues"}
    assert loop["config"] == {"parent": "queueService", "name": "name"}
    assert CORE["variables"]["appQueues"]["value"] == list(APP_QUEUES)


def test_key_vault_is_in_rbac_mode_with_soft_delete_and_purge_protection() -> None:
    vault = the_resource(CORE, "Microsoft.KeyVault/vaults")["config"]["properties"]
    assert vault["enableRbacAuthorization"] is True
    assert vault["enableSoftDelete"] is True
    assert vault["enablePurgeProtection"] is True
    assert "accessPolicies" not in vault


def test_application_insights_takes_entra_authenticated_telemetry_only_into_a_log_analytics_workspace() -> None:
    insights = the_resource(CORE, "Microsoft.Insights/components")["config"]["properties"]
    assert insights["DisableLocalAuth"] is True
    assert accessor_path(insights["WorkspaceResourceId"]) == "logs.id"


def test_the_function_app_is_flex_python_3_11_https_only_tls_1_2_without_ftp_or_basic_publishing() -> None:
    plan = the_resource(APP, "Microsoft.Web/serverfarms")["config"]
    assert plan["sku"] == {"name": "FC1", "tier": "FlexConsumption"}
    assert plan["properties"]["reserved"] is True
    site = the_resource(APP, "Microsoft.Web/sites")["config"]
    assert site["identity"]["type"] == "UserAssigned"
    properties = site["properties"]
    assert properties["httpsOnly"] is True
    assert properties["siteConfig"]["minTlsVersion"] == "1.2"
    assert properties["siteConfig"]["scmMinTlsVersion"] == "1.2"
    assert properties["siteConfig"]["ftpsState"] == "Disabled"
    assert properties["functionAppConfig"]["runtime"] == {"name": "python", "version": "3.11"}
    deployment = properties["functionAppConfig"]["deployment"]["storage"]
    assert deployment["type"] == "blobContainer"
    assert deployment["authentication"]["type"] == "UserAssignedIdentity"
    policies = resources_of(APP, "Microsoft.Web/sites/basicPublishingCredentialsPolicies")
    assert {p["config"]["name"]: p["config"]["properties"]["allow"] for p in policies.values()} == {
        "ftp": False,
        "scm": False,
    }
    settings = the_resource(APP, "Microsoft.Web/sites/config")["config"]
    assert (settings["name"], settings["properties"]) == ("appsettings", "appSettings")


# Built-in role definition ids, from Microsoft Learn "Azure built-in roles for Storage", "... for Security"
# and "... for Monitor" (learn.microsoft.com/azure/role-based-access-control/built-in-roles/...).
BUILT_IN_ROLES = {
    "b7e6dc6d-f1e8-4753-8033-0f276bb0955b": "Storage Blob Data Owner",
    "974c5e8b-45b9-4653-ba55-5f855dd0fb88": "Storage Queue Data Contributor",
    "0a9a7e1f-b9d0-4cc4-a60d-0319b160aaa3": "Storage Table Data Contributor",
    "4633458b-17de-408a-b874-0445c86b69e6": "Key Vault Secrets User",
    "3913510d-42f4-4e42-8a64-420c390055eb": "Monitoring Metrics Publisher",
}
# What the identity needs, on what, and nothing more (docs/deploy.md says why each).
EXPECTED_GRANTS = {
    ("storage", "Storage Blob Data Owner"),
    ("storage", "Storage Queue Data Contributor"),
    ("storage", "Storage Table Data Contributor"),
    ("vault", "Key Vault Secrets User"),
    ("insights", "Monitoring Metrics Publisher"),
}


def role_grants(core: Bicep) -> set[tuple[str, str]]:
    """(scope, role name) of every role assignment; each must go to the app's identity as a service principal."""
    role_ids = core["variables"]["roles"]["value"]
    grants = set()
    for name, assignment in resources_of(core, "Microsoft.Authorization/roleAssignments").items():
        properties = assignment["config"]["properties"]
        assert accessor_path(properties["principalId"]) == "identity.properties.principalId", name
        assert properties["principalType"] == "ServicePrincipal", name
        definition = properties["roleDefinitionId"]["function"]
        assert definition["type"] == "subscription_resource_id", name
        assert definition["parameters"]["resource_type"] == "Microsoft.Authorization/roleDefinitions", name
        key = accessor_path(definition["parameters"]["resource_name_1"]).removeprefix("roles.")
        guid = role_ids[key]
        assert guid in BUILT_IN_ROLES, f"{name}: {guid} is not a built-in role this app needs"
        grants.add((assignment["config"]["scope"], BUILT_IN_ROLES[guid]))
    return grants


def test_the_identity_gets_exactly_the_roles_it_needs_on_exactly_the_resources_that_need_them() -> None:
    assert role_grants(CORE) == EXPECTED_GRANTS
    # nothing else in infra/ grants a role (no deployer or user principal)
    for tree in (bicep("main.bicep"), APP):
        assert resources_of(tree, "Microsoft.Authorization/roleAssignments") == {}


def test_a_role_removed_from_the_bicep_is_reported() -> None:
    text = (INFRA / "core.bicep").read_text()
    start = text.index("resource storageQueueDataContributor")
    end = text.index("resource storageTableDataContributor")
    assert EXPECTED_GRANTS - role_grants(parse(text[:start] + text[end:])) == {
        ("storage", "Storage Queue Data Contributor")
    }


# A value that is a credential, and a name that says it holds one (`...SecretName` only names a secret).
CREDENTIAL_VALUE = re.compile(
    r"AccountKey=|SharedAccessSignature=|[?&;]sig=|Password=|^[A-Za-z0-9+/]{32,}={0,2}$", re.I
)
CREDENTIAL_NAME = re.compile(r"password|token|secret(?!_?name)|key$", re.I)


def secret_problems(text: str) -> list[str]:
    """Where a Bicep file would put a credential into a parameter default or an output."""
    tree = parse(text)
    problems = []
    secure = {p for p, spec in tree["parameters"].items() if {"type": "secure"} in spec["decorators"]}
    for parameter, spec in tree["parameters"].items():
        default = spec["default"]
        if default is not None and (parameter in secure or CREDENTIAL_NAME.search(parameter)):
            problems.append(f"parameter {parameter} has a default")
        elif CREDENTIAL_VALUE.search(str(default or "")):
            problems.append(f"default of {parameter} is a credential")
    for output, spec in tree["outputs"].items():
        value = str(spec["value"])
        if (
            CREDENTIAL_NAME.search(output)
            or CREDENTIAL_VALUE.search(value)
            or re.search(r"'func_name': 'list|'type': 'list", value)
            or any(re.search(rf"\b{p}\b", value) for p in secure)
        ):
            problems.append(f"output {output}")
    if re.search(r"listKeys|listSecrets|AccountKey=", text):
        problems.append("reads or writes an account key")
    return problems


def test_no_secret_in_any_parameter_default_or_output() -> None:
    for name in ("main.bicep", "core.bicep", "app.bicep"):
        assert secret_problems((INFRA / name).read_text()) == [], name


def test_the_secret_check_finds_a_listed_key_in_an_output_and_a_password_default() -> None:
    leaky = (
        "param adminPassword string = 'hunter2'\n"
        "param graphCredentialSecretName string = 'graph-client-secret'\n"
        "resource st 'Microsoft.Storage/storageAccounts@2023-05-01' existing = { name: 'x' }\n"
        "output storageKey string = st.listKeys().keys[0].value\n"
        "output connection string = 'AccountName=x;AccountKey=${st.listKeys().keys[0].value}'\n"
    )
    assert secret_problems(leaky) == [
        "parameter adminPassword has a default",
        "output storageKey",
        "output connection",
        "reads or writes an account key",
    ]


def test_every_checkov_skip_names_its_reason() -> None:
    skips = re.findall(r"checkov:skip=([A-Z0-9_]+)(.*)", "".join(p.read_text() for p in INFRA.glob("*.bicep")))
    assert skips, "the skips are expected in the resources they apply to"
    for check, reason in skips:
        assert re.fullmatch(r":\s*\S.{20,}", reason), f"{check} is skipped without a reason"


# --- 4. the admin scripts ------------------------------------------------------------------------------


# Cmdlets and parameters as Microsoft documents them (parameter lists from each page's syntax section):
# Exchange Online PowerShell, learn.microsoft.com/powershell/module/exchangepowershell/<cmdlet>;
# Microsoft Graph PowerShell, learn.microsoft.com/powershell/module/microsoft.graph.<module>/<cmdlet>;
# PowerShell itself, learn.microsoft.com/powershell/module/microsoft.powershell.<core|utility>/<cmdlet>.
def names(text: str) -> set[str]:
    return set(text.split())


COMMON = {"Confirm", "WhatIf", "ErrorAction", "WarningAction", "Verbose", "Debug", "OutVariable"}
DOCUMENTED_CMDLETS: dict[str, set[str]] = {
    "Connect-ExchangeOnline": names(
        "ConnectionUri AzureADAuthorizationEndpointUri ExchangeEnvironmentName PSSessionOption "
        "DelegatedOrganization Prefix CommandName FormatTypeName AccessToken AppId BypassMailboxAnchoring "
        "Certificate CertificateFilePath CertificatePassword CertificateThumbprint Credential Device "
        "DisableWAM EnableErrorReporting InlineCredential LogDirectoryPath LogLevel ManagedIdentity "
        "ManagedIdentityAccountId Organization PageSize ShowBanner ShowProgress SkipLoadingCmdletHelp "
        "SkipLoadingFormatData TrackPerformance UseMultithreading UserPrincipalName UseRPSSession"
    ),
    "Disconnect-ExchangeOnline": {"ConnectionId", "ModulePrefix"},
    "Get-ServicePrincipal": {"Identity", "Organization"},
    "New-ServicePrincipal": {"AppId", "ObjectId", "ServiceId", "DisplayName", "Organization"},
    "Get-ManagementScope": {"Identity", "DomainController", "Exclusive", "Orphan"},
    "New-ManagementScope": names(
        "Name DatabaseList DatabaseRestrictionFilter RecipientRestrictionFilter RecipientRoot ServerList "
        "ServerRestrictionFilter DomainController Exclusive Force"
    ),
    "Set-ManagementScope": names(
        "Identity DatabaseRestrictionFilter ServerRestrictionFilter RecipientRestrictionFilter RecipientRoot "
        "DomainController Force Name"
    ),
    "Get-ManagementRoleAssignment": names(
        "Identity AssignmentMethod Role ConfigWriteScope CustomConfigWriteScope CustomRecipientWriteScope "
        "Delegating DomainController Enabled Exclusive ExclusiveConfigWriteScope ExclusiveRecipientWriteScope "
        "GetEffectiveUsers RecipientAdministrativeUnitScope RecipientGroupScope "
        "RecipientOrganizationalUnitScope RecipientWriteScope RoleAssignee RoleAssigneeType WritableDatabase "
        "WritableRecipient WritableServer"
    ),
    # the App parameter set only
    "New-ManagementRoleAssignment": names(
        "Name Role App CustomResourceScope Delegating Force RecipientAdministrativeUnitScope RecipientGroupScope"
    ),
    "Test-ServicePrincipalAuthorization": {"Identity", "Resource"},
    "Connect-MgGraph": names(
        "Scopes TenantId ClientId ContextScope Environment UseDeviceCode ClientTimeout NoWelcome Identity "
        "Certificate CertificateSubjectName CertificateThumbprint ClientSecretCredential AccessToken "
        "EnvironmentVariable"
    ),
    "Disconnect-MgGraph": set(),
    "Get-MgServicePrincipal": {"ServicePrincipalId", "Filter", "Property", "Search", "Top", "All", "Sort"},
    "Get-MgServicePrincipalAppRoleAssignment": names(
        "ServicePrincipalId AppRoleAssignmentId ExpandProperty Property Filter Search Skip Sort Top "
        "ConsistencyLevel PageSize All CountVariable"
    ),
    "Remove-MgServicePrincipalAppRoleAssignment": {"AppRoleAssignmentId", "ServicePrincipalId", "IfMatch", "PassThru"},
    "Where-Object": set(),
    "ForEach-Object": set(),
    "Out-Null": set(),
    "Write-Host": set(),
    "Write-Warning": set(),
}
# PowerShell operators look like parameters; they are not.
OPERATORS = names(
    "eq ne gt ge lt le like notlike match notmatch contains notcontains in notin and or not xor join split "
    "replace is isnot as f"
)


def strip_powershell(text: str) -> str:
    """The script without comments, help blocks, here-strings and string literals (cmdlet names in prose or
    in messages are not calls)."""
    text = re.sub(r"<#.*?#>", " ", text, flags=re.S)
    text = re.sub(r'@"\n.*?\n"@', " ", text, flags=re.S)
    text = "\n".join(line.split("#", 1)[0] for line in text.splitlines())  # the script has no '#' in strings
    code, i = [], 0
    while i < len(text):
        quote = text[i]
        if quote not in "'\"":
            code.append(quote)
            i += 1
            continue
        i += 1
        while i < len(text):
            if text[i] == quote and text[i + 1 : i + 2] == quote == "'":  # '' inside '...'
                i += 2
            elif text[i] == quote:
                break
            else:
                i += 2 if text[i] == "`" and quote == '"' else 1
        code.append(quote * 2)
        i += 1
    return "".join(code)


def cmdlet_calls(text: str) -> list[tuple[str, set[str]]]:
    """(cmdlet, parameters) of every call of a cmdlet the script does not define itself."""
    code = strip_powershell(text)
    own = set(re.findall(r"^\s*function\s+([\w-]+)", code, flags=re.M))
    calls = []
    for segment in re.split(r"[|;(){}\n]", code.replace("`\n", " ")):
        match = re.search(r"(?<![\w$-])([A-Z][A-Za-z]+-[A-Z]\w+)", segment)
        if match is None or match.group(1) in own:
            continue
        parameters = set(re.findall(r"(?<![\w$])-([A-Za-z]\w*)", segment[match.end() :])) - OPERATORS
        calls.append((match.group(1), parameters))
    return calls


def undocumented(text: str) -> list[str]:
    problems = []
    for cmdlet, parameters in cmdlet_calls(text):
        if cmdlet not in DOCUMENTED_CMDLETS:
            problems.append(f"{cmdlet} is not in the documented table")
        elif unknown := parameters - DOCUMENTED_CMDLETS[cmdlet] - COMMON:
            problems.append(f"{cmdlet} has no parameter {sorted(unknown)}")
    return problems


EXCHANGE_SCRIPT = (SCRIPTS / "exchange-rbac.ps1").read_text()


def test_the_exchange_script_uses_cmdlets_and_parameters_exactly_as_microsoft_documents_them() -> None:
    assert undocumented(EXCHANGE_SCRIPT) == []
    calls: dict[str, set[str]] = {}
    for cmdlet, parameters in cmdlet_calls(EXCHANGE_SCRIPT):
        calls.setdefault(cmdlet, set()).update(parameters)
    # the steps the issue asks for, with the parameters that make them what they are
    assert {"AppId", "ObjectId"} <= calls["New-ServicePrincipal"]
    assert {"Name", "RecipientRestrictionFilter"} <= calls["New-ManagementScope"]
    assert {"App", "Role", "CustomResourceScope"} <= calls["New-ManagementRoleAssignment"]
    assert {"Identity", "Resource"} <= calls["Test-ServicePrincipalAuthorization"]
    assert {"ServicePrincipalId", "AppRoleAssignmentId"} <= calls["Remove-MgServicePrincipalAppRoleAssignment"]
    assert "'Application Mail.Send'" in EXCHANGE_SCRIPT and "'Application Mail.ReadWrite'" in EXCHANGE_SCRIPT
    assert "SupportsShouldProcess = $true" in EXCHANGE_SCRIPT, "-WhatIf shows the plan and changes nothing"


def test_a_misspelt_parameter_or_an_unknown_cmdlet_in_the_exchange_script_is_reported() -> None:
    misspelt = EXCHANGE_SCRIPT.replace("-CustomResourceScope $ScopeName", "-CustomRecipientScope $ScopeName")
    assert undocumented(misspelt) == ["New-ManagementRoleAssignment has no parameter ['CustomRecipientScope']"]
    invented = EXCHANGE_SCRIPT.replace("Get-ManagementScope |", "Get-ManagementScopes |")
    assert undocumented(invented) == ["Get-ManagementScopes is not in the documented table"]


def run_entra_script(*args: str) -> subprocess.CompletedProcess[str]:
    # PATH without az and azd, as on this machine: the script must stop before changing anything
    env = {"PATH": "/usr/bin:/bin", "HOME": os.environ.get("HOME", "/tmp")}
    return subprocess.run(
        ["bash", str(SCRIPTS / "entra-app.sh"), *args], capture_output=True, text=True, env=env, timeout=30
    )


def test_the_entra_script_explains_its_options_and_refuses_unknown_ones() -> None:
    usage = run_entra_script("--help")
    assert usage.returncode == 0
    for option in ("--mode keyvault|managed_identity", "--vault NAME", "--digests", "--scoped", "--rotate"):
        assert option in usage.stdout
    wrong = run_entra_script("--vault", "kv-x", "--frobnicate")
    assert wrong.returncode == 1
    assert "unknown option: --frobnicate" in wrong.stderr


def test_the_entra_script_stops_with_a_clear_message_before_any_change_when_something_is_missing() -> None:
    no_vault = run_entra_script("--yes")
    assert (no_vault.returncode, no_vault.stderr.strip()) == (
        1,
        "entra-app.sh: no vault: pass --vault or run inside the azd project after azd up",
    )
    bad_mode = run_entra_script("--mode", "both")
    assert "--mode must be keyvault or managed_identity, not 'both'" in bad_mode.stderr
    if shutil.which("az", path="/usr/bin:/bin") is None:
        no_cli = run_entra_script("--vault", "kv-x", "--yes")
        assert no_cli.returncode == 1
        assert "the Azure CLI (az) is required" in no_cli.stderr


def test_the_bash_scripts_pass_shellcheck() -> None:
    if shutil.which("shellcheck") is None:
        if os.environ.get("CI"):
            pytest.fail("shellcheck is missing (make infra-check installs it from Debian)")
        pytest.skip("shellcheck is not installed (Debian package shellcheck; make infra-check installs it)")
    scripts = sorted(str(p) for p in SCRIPTS.glob("*.sh"))
    assert scripts
    result = subprocess.run(["shellcheck", "--severity=style", *scripts], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout


# --- 5. what gets deployed -----------------------------------------------------------------------------

# The app at run time: the triggers, the package, the routing file, and what the remote build installs.
DEPLOYED = {"function_app.py", "host.json", "requirements.txt", "shared", "config"}


def tracked_top_level() -> set[str]:
    listed = subprocess.run(
        ["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True, timeout=30
    ).stdout.splitlines()
    return {path.split("/", 1)[0] for path in listed}


def test_funcignore_deploys_the_app_and_keeps_every_dev_only_file_out() -> None:
    ignore = pathspec.GitIgnoreSpec.from_lines((ROOT / ".funcignore").read_text().splitlines())
    top = tracked_top_level()
    assert top >= DEPLOYED
    kept = {name for name in top if not ignore.match_file(name) and not ignore.match_file(f"{name}/x")}
    assert kept == DEPLOYED, f"classify in .funcignore or DEPLOYED: {sorted(kept ^ DEPLOYED)}"
    for dev_only in (".venv/lib/x.py", ".venv-checkov/bin/checkov", "local.settings.json", "tests/test_x.py"):
        assert ignore.match_file(dev_only), dev_only
