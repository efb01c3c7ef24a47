#!/usr/bin/env bash
# Admin step 1 of docs/deploy.md: the Graph permissions the notifier needs, with the Azure CLI.
#
# keyvault mode (default): an app registration with the Mail.Send (and, with --digests, Mail.ReadWrite)
#   application permissions, admin consent, and a client secret or certificate that goes straight into the
#   vault azd created (never printed, never on a command line).
# managed_identity mode: the same app roles granted to the Function App's managed identity instead.
#
# Each step looks first and changes only what is missing, so running it again changes nothing. It prints
# what it will do and asks before doing it (--yes skips the question). Values default to what `azd up`
# stored in the azd environment (azd env get-value), so inside the project it needs no arguments.
set -euo pipefail
umask 077 # the credential passes through a private temporary file

GRAPH_APP_ID=00000003-0000-0000-c000-000000000000 # Microsoft Graph's well-known application id

usage() {
  cat <<'EOF'
Usage: scripts/entra-app.sh [options]
  --mode keyvault|managed_identity  who holds the Graph app roles (default: GRAPH_AUTH_MODE or keyvault)
  --vault NAME                      Key Vault for the credential (default: AZURE_KEY_VAULT_NAME)
  --secret-name NAME                vault secret name (default: GRAPH_CREDENTIAL_SECRET_NAME or graph-client-secret)
  --credential secret|certificate   kind of credential (default: GRAPH_CREDENTIAL_KIND or secret)
  --name NAME                       app registration display name (default: graph-mail-notifier-<azd env>)
  --identity-principal-id ID        managed identity's principal id (default: AZURE_IDENTITY_PRINCIPAL_ID)
  --digests                         also grant Mail.ReadWrite (mailbox digests read and tag messages)
  --scoped                          Exchange RBAC for Applications scopes the app (scripts/exchange-rbac.ps1):
                                    grant no tenant-wide Mail.* roles, and remove any that exist
  --rotate                          add a new credential even if the vault already holds one
  --yes                             do not ask before changing anything
EOF
}

# Value of an azd environment variable, or empty (no azd, no project, or not set).
azd_value() {
  if command -v azd >/dev/null 2>&1; then azd env get-value "$1" 2>/dev/null || true; fi
}

say() { printf '%s\n' "$*"; }
fail() {
  printf 'entra-app.sh: %s\n' "$*" >&2
  exit 1
}

MODE=${GRAPH_AUTH_MODE:-$(azd_value GRAPH_AUTH_MODE)}
VAULT=${AZURE_KEY_VAULT_NAME:-$(azd_value AZURE_KEY_VAULT_NAME)}
SECRET_NAME=${GRAPH_CREDENTIAL_SECRET_NAME:-$(azd_value GRAPH_CREDENTIAL_SECRET_NAME)}
CREDENTIAL=${GRAPH_CREDENTIAL_KIND:-$(azd_value GRAPH_CREDENTIAL_KIND)}
IDENTITY_PRINCIPAL_ID=${AZURE_IDENTITY_PRINCIPAL_ID:-$(azd_value AZURE_IDENTITY_PRINCIPAL_ID)}
ENV_NAME=${AZURE_ENV_NAME:-$(azd_value AZURE_ENV_NAME)}
APP_NAME=""
DIGESTS=false
SCOPED=false
ROTATE=false
ASSUME_YES=false

while [ $# -gt 0 ]; do
  case "$1" in
  --mode) MODE=${2:?--mode needs a value}; shift 2 ;;
  --vault) VAULT=${2:?--vault needs a value}; shift 2 ;;
  --secret-name) SECRET_NAME=${2:?--secret-name needs a value}; shift 2 ;;
  --credential) CREDENTIAL=${2:?--credential needs a value}; shift 2 ;;
  --name) APP_NAME=${2:?--name needs a value}; shift 2 ;;
  --identity-principal-id) IDENTITY_PRINCIPAL_ID=${2:?--identity-principal-id needs a value}; shift 2 ;;
  --digests) DIGESTS=true; shift ;;
  --scoped) SCOPED=true; shift ;;
  --rotate) ROTATE=true; shift ;;
  --yes) ASSUME_YES=true; shift ;;
  -h | --help) usage; exit 0 ;;
  *) usage >&2; fail "unknown option: $1" ;;
  esac
done

MODE=${MODE:-keyvault}
SECRET_NAME=${SECRET_NAME:-graph-client-secret}
CREDENTIAL=${CREDENTIAL:-secret}
APP_NAME=${APP_NAME:-graph-mail-notifier${ENV_NAME:+-$ENV_NAME}}

case "$MODE" in keyvault | managed_identity) ;; *) fail "--mode must be keyvault or managed_identity, not '$MODE'" ;; esac
case "$CREDENTIAL" in secret | certificate) ;; *) fail "--credential must be secret or certificate, not '$CREDENTIAL'" ;; esac
if [ "$MODE" = keyvault ] && [ -z "$VAULT" ]; then fail "no vault: pass --vault or run inside the azd project after azd up"; fi
if [ "$MODE" = managed_identity ] && [ -z "$IDENTITY_PRINCIPAL_ID" ]; then
  fail "no managed identity: pass --identity-principal-id or run inside the azd project after azd up"
fi
command -v az >/dev/null 2>&1 || fail "the Azure CLI (az) is required; sign in with az login as an admin who may grant consent"
az account show >/dev/null 2>&1 || fail "not signed in: run az login"

ROLES=(Mail.Send)
if [ "$DIGESTS" = true ]; then ROLES+=(Mail.ReadWrite); fi

# --- the plan -----------------------------------------------------------------------------------------
say "This script will, in tenant $(az account show --query tenantId -o tsv):"
if [ "$MODE" = keyvault ]; then
  say "  - find or create the app registration '$APP_NAME' and its service principal"
  say "  - declare the Microsoft Graph application permissions: ${ROLES[*]}"
  if [ "$SCOPED" = true ]; then
    say "  - grant them NO tenant-wide consent (--scoped: Exchange RBAC decides), removing any that exists"
  else
    say "  - grant them admin consent, tenant-wide (scripts/exchange-rbac.ps1 narrows it to your mailboxes)"
  fi
  if [ "$ROTATE" = true ]; then
    say "  - add a new $CREDENTIAL to the app and store it in vault '$VAULT' as '$SECRET_NAME'"
  else
    say "  - unless vault '$VAULT' holds '$SECRET_NAME' already: add a $CREDENTIAL to the app and store it there"
  fi
  say "  - give you (the signed-in admin) the vault data role needed for that, if you lack it"
else
  say "  - grant the managed identity (principal $IDENTITY_PRINCIPAL_ID) the Graph app roles: ${ROLES[*]}"
fi
if [ "$ASSUME_YES" != true ]; then
  read -r -p "Go ahead? [y/N] " answer
  case "$answer" in y | Y | yes) ;; *) say "Nothing changed."; exit 0 ;; esac
fi

# --- Microsoft Graph's service principal and the app role ids (looked up, not hard-coded) -------------
GRAPH_SP_ID=$(az ad sp show --id "$GRAPH_APP_ID" --query id -o tsv)
role_id() {
  az ad sp show --id "$GRAPH_APP_ID" \
    --query "appRoles[?value=='$1' && contains(allowedMemberTypes, 'Application')].id | [0]" -o tsv
}

# Grant (or, with --scoped, revoke) the Graph app roles for one service principal, by app role assignment:
# this is what admin consent records for application permissions.
grant_roles() {
  local principal=$1 role rid existing
  for role in "${ROLES[@]}"; do
    rid=$(role_id "$role")
    existing=$(az rest --method GET \
      --uri "https://graph.microsoft.com/v1.0/servicePrincipals/$principal/appRoleAssignments" \
      --query "value[?appRoleId=='$rid' && resourceId=='$GRAPH_SP_ID'].id | [0]" -o tsv)
    if [ "$SCOPED" = true ]; then
      if [ -n "$existing" ]; then
        az rest --method DELETE --uri \
          "https://graph.microsoft.com/v1.0/servicePrincipals/$principal/appRoleAssignments/$existing" >/dev/null
        say "  $role: tenant-wide grant removed (--scoped)"
      else
        say "  $role: no tenant-wide grant (--scoped)"
      fi
    elif [ -n "$existing" ]; then
      say "  $role: granted already"
    else
      az rest --method POST \
        --uri "https://graph.microsoft.com/v1.0/servicePrincipals/$principal/appRoleAssignments" \
        --headers Content-Type=application/json \
        --body "{\"principalId\": \"$principal\", \"resourceId\": \"$GRAPH_SP_ID\", \"appRoleId\": \"$rid\"}" >/dev/null
      say "  $role: granted"
    fi
  done
}

if [ "$MODE" = managed_identity ]; then
  say "Granting the managed identity its Graph app roles"
  grant_roles "$IDENTITY_PRINCIPAL_ID"
  say "Done. The app needs no secret in this mode (GRAPH_AUTH_MODE=managed_identity)."
  say "To limit it to your mailboxes: scripts/exchange-rbac.ps1 -AppId <AZURE_IDENTITY_CLIENT_ID> ..."
  exit 0
fi

# --- app registration and service principal ------------------------------------------------------------
mapfile -t APP_IDS < <(az ad app list --display-name "$APP_NAME" --query "[].appId" -o tsv)
if [ "${#APP_IDS[@]}" -gt 1 ]; then fail "more than one app registration is named '$APP_NAME'; pass --name"; fi
if [ "${#APP_IDS[@]}" -eq 1 ]; then
  APP_ID=${APP_IDS[0]}
  say "App registration '$APP_NAME' exists: $APP_ID"
else
  APP_ID=$(az ad app create --display-name "$APP_NAME" --sign-in-audience AzureADMyOrg --query appId -o tsv)
  say "App registration '$APP_NAME' created: $APP_ID"
fi
SP_ID=$(az ad sp list --filter "appId eq '$APP_ID'" --query "[0].id" -o tsv)
if [ -z "$SP_ID" ]; then
  SP_ID=$(az ad sp create --id "$APP_ID" --query id -o tsv)
  say "Service principal created: $SP_ID"
fi

say "Graph application permissions"
for role in "${ROLES[@]}"; do
  rid=$(role_id "$role")
  declared=$(az ad app show --id "$APP_ID" \
    --query "requiredResourceAccess[?resourceAppId=='$GRAPH_APP_ID'].resourceAccess[] | [?id=='$rid'].id | [0]" -o tsv)
  if [ -z "$declared" ]; then
    az ad app permission add --id "$APP_ID" --api "$GRAPH_APP_ID" --api-permissions "$rid=Role" --only-show-errors
  fi
done
grant_roles "$SP_ID"

# --- the vault: the admin's data role, then the credential -----------------------------------------------
VAULT_ID=$(az keyvault show --name "$VAULT" --query id -o tsv)
ME=$(az ad signed-in-user show --query id -o tsv)
if [ "$CREDENTIAL" = secret ]; then VAULT_ROLE="Key Vault Secrets Officer"; else VAULT_ROLE="Key Vault Certificates Officer"; fi
if [ -z "$(az role assignment list --assignee "$ME" --role "$VAULT_ROLE" --scope "$VAULT_ID" --query "[0].id" -o tsv)" ]; then
  az role assignment create --assignee-object-id "$ME" --assignee-principal-type User \
    --role "$VAULT_ROLE" --scope "$VAULT_ID" --only-show-errors >/dev/null
  say "You now hold '$VAULT_ROLE' on $VAULT (remove it when done: az role assignment delete --assignee $ME --role \"$VAULT_ROLE\" --scope $VAULT_ID)"
fi

# Retries while a new role assignment propagates (Key Vault answers 403 for a few minutes).
with_retry() {
  local attempt
  for attempt in 1 2 3 4 5 6 7 8 9 10; do
    if "$@"; then return 0; fi
    say "  (vault refused, attempt $attempt/10; a new role can take a few minutes to apply)"
    sleep 30
  done
  return 1
}

# Whether the vault holds the credential already: 0 yes, 1 no; a refusal (403 while the role propagates)
# is neither, so it waits and asks again rather than making a second credential.
vault_holds_credential() {
  local kind=secret answer attempt
  if [ "$CREDENTIAL" = certificate ]; then kind=certificate; fi
  for attempt in 1 2 3 4 5 6 7 8 9 10; do
    if answer=$(az keyvault "$kind" show --vault-name "$VAULT" --name "$SECRET_NAME" --query id -o tsv 2>&1); then
      return 0
    fi
    case "$answer" in *NotFound*) return 1 ;; esac
    say "  (vault refused, attempt $attempt/10; a new role can take a few minutes to apply)"
    sleep 30
  done
  fail "vault $VAULT keeps refusing: check that you hold '$VAULT_ROLE' on it"
}

if [ "$ROTATE" != true ] && vault_holds_credential; then
  say "Vault $VAULT holds '$SECRET_NAME' already; nothing to do (--rotate adds a new credential)"
else
  WORK=$(mktemp -d)
  trap 'rm -rf "$WORK"' EXIT
  if [ "$CREDENTIAL" = secret ]; then
    # The password goes from the CLI's answer to a private file to the vault: never printed, never an
    # argument of a command (printf is a shell builtin).
    password=$(az ad app credential reset --id "$APP_ID" --append --display-name "notifier $(date -u +%Y-%m-%d)" \
      --years 1 --query password -o tsv)
    printf '%s' "$password" >"$WORK/secret"
    unset password
    EXPIRES=$(date -u -d '+1 year' +%Y-%m-%dT%H:%M:%SZ)
    with_retry az keyvault secret set --vault-name "$VAULT" --name "$SECRET_NAME" --file "$WORK/secret" \
      --encoding utf-8 --expires "$EXPIRES" --content-type "client secret of $APP_ID" --query id -o tsv >/dev/null
  else
    # The key pair is made in the vault and never leaves it; only the public certificate goes to Entra.
    az keyvault certificate get-default-policy >"$WORK/policy.json"
    with_retry az keyvault certificate create --vault-name "$VAULT" --name "$SECRET_NAME" \
      --policy "@$WORK/policy.json" --query id -o tsv >/dev/null
    az keyvault certificate download --vault-name "$VAULT" --name "$SECRET_NAME" --file "$WORK/cert.pem" --encoding PEM
    az ad app credential reset --id "$APP_ID" --append --cert "@$WORK/cert.pem" --only-show-errors >/dev/null
  fi
  say "New $CREDENTIAL stored in $VAULT as '$SECRET_NAME' (the app picks it up within an hour, or at once after a restart)"
fi

say ""
say "Done. Give the app its client id, then re-provision so the setting sticks:"
say "  azd env set GRAPH_CLIENT_ID $APP_ID && azd provision"
if [ "$SCOPED" != true ]; then
  say "Then limit the app to your mailboxes (admin step 2):"
  say "  pwsh scripts/exchange-rbac.ps1 -AppId $APP_ID -Mailboxes <MAIL_DEFAULT_SENDER>[,<more senders>]"
fi
