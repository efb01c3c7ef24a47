#!/usr/bin/env bash
# azd's postprovision hook (azure.yaml): after every `azd provision` / `azd up`, say which admin step of
# docs/deploy.md comes next, and run step 1 when asked to.
#
# The app deploys before the admin steps exist; until then it answers 503 not_configured and its health names
# the missing setting. This hook never fails the deployment: it prints the next commands, and with
# `azd env set ADMIN_STEPS run` it runs scripts/entra-app.sh itself (which shows its plan and asks first).
# Step 2 (Exchange, PowerShell) is only printed: it needs an Exchange administrator's sign-in.
set -uo pipefail

here=$(cd "$(dirname "$0")" && pwd)

# Value of an azd environment variable: azd hands them to hooks as the environment; else ask azd.
value() {
  local name=$1
  if [ -n "${!name:-}" ]; then
    printf '%s' "${!name}"
  elif command -v azd >/dev/null 2>&1; then
    azd env get-value "$name" 2>/dev/null || true
  fi
}

MODE=$(value GRAPH_AUTH_MODE)
MODE=${MODE:-keyvault}
CLIENT_ID=$(value GRAPH_CLIENT_ID)
APP_URL=$(value AZURE_FUNCTION_APP_URL)
APP_URL=${APP_URL:-https://<app host>}
SENDER=$(value MAIL_DEFAULT_SENDER)
SENDER=${SENDER:-<sender mailbox>}
ADMIN_STEPS=$(value ADMIN_STEPS)

APP_ID=${CLIENT_ID:-<appId>}
step1="scripts/entra-app.sh --digests"
[ "$MODE" = managed_identity ] && step1="scripts/entra-app.sh --mode managed_identity --digests"

echo
echo "graph-mail-notifier: the admin steps (docs/deploy.md)"
if [ "$MODE" = keyvault ] && [ -n "$CLIENT_ID" ]; then
  echo "  step 1 (Entra): done, GRAPH_CLIENT_ID is $CLIENT_ID"
elif [ "$ADMIN_STEPS" = run ] && command -v az >/dev/null 2>&1 && az account show >/dev/null 2>&1; then
  echo "  step 1 (Entra): running $step1 (it shows its plan and asks before changing anything)"
  if ! "$here/entra-app.sh" --mode "$MODE" --digests; then
    echo "  step 1 did not finish; run it again as an Entra admin: az login && $step1"
  fi
else
  echo "  step 1 (Entra), as an admin who may grant application permissions:"
  echo "      az login && $step1"
  if [ "$MODE" = keyvault ]; then
    echo "      azd env set GRAPH_CLIENT_ID <the appId it prints> && azd provision"
  fi
  echo "    (or: azd env set ADMIN_STEPS run, and the next azd provision runs it)"
fi
echo "  step 2 (Exchange), in PowerShell 7 as an Exchange admin: limit the app to its mailboxes"
echo "      ./scripts/exchange-rbac.ps1 -AppId $APP_ID -Mailboxes $SENDER -OutsideMailbox <another mailbox>"
echo "  then: curl $APP_URL/api/health   (503 with config failing until step 1 is done)"
exit 0
