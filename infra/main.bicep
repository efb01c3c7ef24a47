// `azd up` entry point: a resource group with the Graph mail notifier in it (docs/deploy.md).
// core.bicep: identity, Storage, Key Vault, monitoring and the identity's roles; app.bicep: the Flex
// Consumption Function App. Every app setting is in one place below: `appSettings`.
targetScope = 'subscription'

@minLength(1)
@maxLength(64)
@description('azd environment name; names the resource group and seeds the unique resource names.')
param environmentName string

// The regions that offer Flex Consumption, so `azd up` offers only those: the list of Microsoft's azd
// Functions quickstart (github.com/Azure-Samples/functions-quickstart-python-http-azd, infra/main.bicep,
// read 2026-12-04). Microsoft Learn, "Azure Functions Flex Consumption plan hosting" (read 2026-12-04), keeps
// the current list behind `az functionapp list-flexconsumption-locations`: add a region from there when needed.
// The canary region eastus2euap of that list is left out: it takes no ordinary subscription.
@minLength(1)
@description('Region of every resource; it must offer the Flex Consumption plan.')
@allowed([
  'australiaeast'
  'australiasoutheast'
  'brazilsouth'
  'canadacentral'
  'centralindia'
  'centralus'
  'eastasia'
  'eastus'
  'eastus2'
  'francecentral'
  'germanywestcentral'
  'italynorth'
  'japaneast'
  'koreacentral'
  'northcentralus'
  'northeurope'
  'norwayeast'
  'southafricanorth'
  'southcentralus'
  'southeastasia'
  'southindia'
  'spaincentral'
  'swedencentral'
  'uaenorth'
  'uksouth'
  'ukwest'
  'westcentralus'
  'westeurope'
  'westus'
  'westus2'
  'westus3'
])
@metadata({ azd: { type: 'location' } })
param location string

// --- the organisation's values (docs/deploy.md says where each comes from) ---------------------

@description('Mailbox mail is sent from when a request names none (MAIL_DEFAULT_SENDER). Required.')
@minLength(3)
param mailDefaultSender string

@description('Comma list of mailboxes callers may send as; empty = the default sender only.')
param mailAllowedSenders string = ''

@description('Comma list of recipient domains mail may go to; empty = the allowed senders\' own domains; * = any.')
param mailAllowedRecipientDomains string = ''

@description('Comma list of folders of the container mail-attachments (e.g. exports/) whose blobs mails on the mail-outbox queue may name as attachments; empty = none.')
param mailQueueBlobPrefixes string = ''

@description('The same for mails posted as JSON to /api/mail; empty = none (forms carry their own files).')
param mailApiBlobPrefixes string = ''

@description('keyvault: the identity reads the app registration\'s credential from Key Vault. managed_identity: the identity holds the Graph app roles itself.')
@allowed(['keyvault', 'managed_identity'])
param graphAuthMode string = 'keyvault'

@description('Application (client) id of the Graph app registration (scripts/entra-app.sh prints it); empty until that script has run, or in managed_identity mode.')
param graphClientId string = ''

@description('Tenant of the Graph app registration; this subscription\'s tenant by default.')
param graphTenantId string = subscription().tenantId

@description('Name of the vault secret holding the Graph credential.')
param graphCredentialSecretName string = 'graph-client-secret'

@description('secret (a client secret) or certificate (PEM or base64 PFX in the vault secret).')
@allowed(['secret', 'certificate'])
param graphCredentialKind string = 'secret'

@description('Graph root; change for a national cloud.')
param graphBaseUrl string = 'https://graph.microsoft.com/v1.0'

@description('Routing and digest file, relative to the app (NOTIFY_CONFIG); edit config/notify.yaml before deploying, or point at your own file.')
param notifyConfig string = 'config/notify.yaml'

@description('NCRONTAB (six fields, UTC on Flex Consumption) of the alert digest.')
param alertDigestSchedule string = '0 0 * * * *'

@description('NCRONTAB (six fields, UTC on Flex Consumption) of the mailbox digests.')
param mailboxDigestSchedule string = '0 0 7 * * 1-5'

@description('hashed or plain recipients in audit records.')
@allowed(['hashed', 'plain'])
param auditRecipients string = 'hashed'

@description('Seconds a mail being sent stays claimed by one instance (5-3600).')
@minValue(5)
@maxValue(3600)
param mailSendLeaseSeconds int = 120

@description('How mail goes to Graph: auto (drafts where the app has Mail.ReadWrite, else sendMail), draft or sendmail.')
@allowed(['auto', 'draft', 'sendmail'])
param mailDeliveryMode string = 'auto'

@description('Minutes a digest occurrence missed while the app was down may still run late (0-10080).')
@minValue(0)
@maxValue(10080)
param digestScheduleGraceMinutes int = 60

@description('Largest mail in bytes, body and attachments (MAIL_MAX_MESSAGE_BYTES): Exchange Online\'s default is 35 MB; raise it with the mailboxes\' own limit, up to 150 MB.')
@minValue(1048576)
@maxValue(157286400)
param mailMaxMessageBytes int = 36700160

@description('Messages per minute each sending mailbox hands to Graph (Exchange allows 30; 0 = not paced).')
@minValue(0)
@maxValue(2000)
param mailBudgetMessagesPerMinute int = 25

@description('Recipients per rolling 24 hours per sending mailbox (Exchange allows 10,000; 0 = not counted).')
@minValue(0)
@maxValue(10000000)
param mailBudgetRecipientsPerDay int = 9000

@description('Percent of each mailbox\'s daily recipients kept for alert mail (0-90).')
@minValue(0)
@maxValue(90)
param mailBudgetAlertReservePercent int = 20

@description('Comma list of senders whose mail may claim the alert lanes (critical, alert); empty = only the app\'s own alert mail.')
param mailPrioritySenders string = ''

@description('Sender pools, `name: a@x, b@x; other: c@x`; every member must be an allowed sender.')
param mailSenderPools string = ''

@description('Most instances the app scales out to.')
@minValue(1)
@maxValue(1000)
param maximumInstanceCount int = 40

var resourceToken = toLower(uniqueString(subscription().id, environmentName, location))
var tags = { 'azd-env-name': environmentName }
var deploymentContainerName = 'app-package-${resourceToken}'

resource rg 'Microsoft.Resources/resourceGroups@2024-03-01' = {
  name: 'rg-${environmentName}'
  location: location
  tags: tags
}

module core 'core.bicep' = {
  name: 'core'
  scope: rg
  params: {
    location: location
    tags: tags
    resourceToken: resourceToken
    deploymentContainerName: deploymentContainerName
  }
}

// Every app setting the app reads (shared/config.py) plus the host's own. tests/test_infra.py fails when a
// setting the app reads is missing here, or one here is unknown to the app and the host.
var appSettings = {
  // Functions host and the app's Storage: identity-based, no connection string (shared keys are off)
  AzureWebJobsStorage__accountName: core.outputs.storageAccountName
  AzureWebJobsStorage__credential: 'managedidentity'
  AzureWebJobsStorage__clientId: core.outputs.identityClientId
  // Application Insights through the identity (the component has local auth off)
  APPLICATIONINSIGHTS_CONNECTION_STRING: core.outputs.insightsConnectionString
  APPLICATIONINSIGHTS_AUTHENTICATION_STRING: 'ClientId=${core.outputs.identityClientId};Authorization=AAD'
  // identity, vault and Graph
  AZURE_CLIENT_ID: core.outputs.identityClientId
  AZURE_AUTHORITY_HOST: environment().authentication.loginEndpoint
  GRAPH_AUTH_MODE: graphAuthMode
  GRAPH_TENANT_ID: graphTenantId
  GRAPH_CLIENT_ID: graphClientId
  KEY_VAULT_URL: core.outputs.vaultUri
  KEY_VAULT_VERIFY_CHALLENGE_RESOURCE: 'true'
  GRAPH_CREDENTIAL_SECRET_NAME: graphCredentialSecretName
  GRAPH_CREDENTIAL_KIND: graphCredentialKind
  GRAPH_BASE_URL: graphBaseUrl
  // mail policy, routing, schedules, audit
  MAIL_DEFAULT_SENDER: mailDefaultSender
  MAIL_ALLOWED_SENDERS: mailAllowedSenders
  MAIL_ALLOWED_RECIPIENT_DOMAINS: mailAllowedRecipientDomains
  MAIL_QUEUE_BLOB_PREFIXES: mailQueueBlobPrefixes
  MAIL_API_BLOB_PREFIXES: mailApiBlobPrefixes
  MAIL_SEND_LEASE_SECONDS: string(mailSendLeaseSeconds)
  MAIL_DELIVERY_MODE: mailDeliveryMode
  MAIL_MAX_MESSAGE_BYTES: string(mailMaxMessageBytes)
  MAIL_BUDGET_MESSAGES_PER_MINUTE: string(mailBudgetMessagesPerMinute)
  MAIL_BUDGET_RECIPIENTS_PER_DAY: string(mailBudgetRecipientsPerDay)
  MAIL_BUDGET_ALERT_RESERVE_PERCENT: string(mailBudgetAlertReservePercent)
  MAIL_PRIORITY_SENDERS: mailPrioritySenders
  MAIL_SENDER_POOLS: mailSenderPools
  NOTIFY_CONFIG: notifyConfig
  ALERT_DIGEST_SCHEDULE: alertDigestSchedule
  MAILBOX_DIGEST_SCHEDULE: mailboxDigestSchedule
  DIGEST_SCHEDULE_GRACE_MINUTES: string(digestScheduleGraceMinutes)
  AUDIT_RECIPIENTS: auditRecipients
  LIBRARY_LOG_LEVEL: 'warning' // the SDKs' request logging would be most of Application Insights' bill
}

module app 'app.bicep' = {
  name: 'app'
  scope: rg
  params: {
    location: location
    tags: tags
    resourceToken: resourceToken
    identityId: core.outputs.identityId
    blobEndpoint: core.outputs.blobEndpoint
    deploymentContainerName: deploymentContainerName
    appSettings: appSettings
    maximumInstanceCount: maximumInstanceCount
  }
}

// What the admin scripts and the next steps of docs/deploy.md need (azd stores them in .azure/<env>/.env)
output AZURE_LOCATION string = location
output AZURE_TENANT_ID string = subscription().tenantId
output AZURE_RESOURCE_GROUP string = rg.name
output AZURE_FUNCTION_APP_NAME string = app.outputs.name
output AZURE_FUNCTION_APP_URL string = 'https://${app.outputs.defaultHostName}'
output AZURE_KEY_VAULT_NAME string = core.outputs.vaultName
output AZURE_KEY_VAULT_URL string = core.outputs.vaultUri
output AZURE_IDENTITY_CLIENT_ID string = core.outputs.identityClientId
output AZURE_IDENTITY_PRINCIPAL_ID string = core.outputs.identityPrincipalId
output GRAPH_CREDENTIAL_SECRET_NAME string = graphCredentialSecretName
