// Everything the Function App stands on: its identity, Storage, Key Vault and monitoring, plus the roles
// that identity needs on them and nothing more. Plain resource declarations (no registry modules), so the
// file can be checked offline (tests/test_infra.py, checkov).

@description('Region of every resource.')
param location string

@description('Tags of every resource.')
param tags object

@description('Short unique suffix of the resource names.')
param resourceToken string

@description('Blob container the Flex Consumption plan deploys the app package from.')
param deploymentContainerName string

@description('Days Log Analytics keeps the app logs.')
param logRetentionDays int = 30

// Built-in role definition ids, as Microsoft publishes them:
// https://learn.microsoft.com/azure/role-based-access-control/built-in-roles/storage
// https://learn.microsoft.com/azure/role-based-access-control/built-in-roles/security
// https://learn.microsoft.com/azure/role-based-access-control/built-in-roles/monitor
var roles = {
  // the Functions host's own blobs (keys, timer and singleton leases) and the app's claim-check, notice
  // and digest-run containers, which the app creates on first use
  storageBlobDataOwner: 'b7e6dc6d-f1e8-4753-8033-0f276bb0955b'
  // queue triggers (read, process) and the app's own queues: it sends, updates and deletes (and creates one missing)
  storageQueueDataContributor: '974c5e8b-45b9-4653-ba55-5f855dd0fb88'
  // the app's tables (mail status, audit, alert groups, digests, instances), created on first use
  storageTableDataContributor: '0a9a7e1f-b9d0-4cc4-a60d-0319b160aaa3'
  // reading the Graph credential and alert sources' secrets; nothing else in the vault
  keyVaultSecretsUser: '4633458b-17de-408a-b874-0445c86b69e6'
  // sending telemetry to Application Insights with Entra authentication (local auth is off)
  monitoringMetricsPublisher: '3913510d-42f4-4e42-8a64-420c390055eb'
}

resource identity 'Microsoft.ManagedIdentity/userAssignedIdentities@2023-01-31' = {
  name: 'id-notifier-${resourceToken}'
  location: location
  tags: tags
}

resource storage 'Microsoft.Storage/storageAccounts@2023-05-01' = {
  // checkov:skip=CKV_AZURE_35: no VNet (and so no private endpoint) in this template; shared keys are off, so every request needs an Entra token with a data role, which only the app's identity holds
  // checkov:skip=CKV_AZURE_59: as CKV_AZURE_35: the public endpoint takes Entra-authorised requests only (no shared key, no anonymous blob access)
  // checkov:skip=CKV_AZURE_206: LRS on purpose: the account holds transient state (queues, status rows, the package azd re-deploys) and LRS exists in every Flex Consumption region
  // checkov:skip=CKV_AZURE_43: false positive: checkov cannot evaluate the interpolation; 'st' + uniqueString() is 15 lowercase letters and digits
  name: 'st${resourceToken}'
  location: location
  tags: tags
  kind: 'StorageV2'
  sku: {
    name: 'Standard_LRS'
  }
  properties: {
    accessTier: 'Hot'
    allowSharedKeyAccess: false
    defaultToOAuthAuthentication: true
    allowBlobPublicAccess: false
    allowCrossTenantReplication: false
    minimumTlsVersion: 'TLS1_2'
    supportsHttpsTrafficOnly: true
    publicNetworkAccess: 'Enabled'
    networkAcls: {
      defaultAction: 'Allow'
      bypass: 'AzureServices'
    }
  }
}

resource blobService 'Microsoft.Storage/storageAccounts/blobServices@2023-05-01' = {
  parent: storage
  name: 'default'
  properties: {
    deleteRetentionPolicy: {
      enabled: true
      days: 7
    }
    containerDeleteRetentionPolicy: {
      enabled: true
      days: 7
    }
  }
}

// The app's queues (shared/store/storage.py APP_QUEUES), made here so producers can send to them, and a role
// can be scoped to one of them, before the app's first run; the app makes any that is missing when it first
// sends a message.
var appQueues = [
  'mail-outbox'
  'mail-outbox-poison'
  'alerts-inbox'
  'alerts-inbox-poison'
  'alerts-flush'
  'alerts-flush-poison'
]

resource queueService 'Microsoft.Storage/storageAccounts/queueServices@2023-05-01' = {
  parent: storage
  name: 'default'
}

resource appQueue 'Microsoft.Storage/storageAccounts/queueServices/queues@2023-05-01' = [for name in appQueues: {
  parent: queueService
  name: name
}]

// Attachment blobs are deleted by the app once their mail is sent or failed. A blob no mail will ever name
// (a form whose instance died before the enqueue, a producer's upload never enqueued) is removed by Storage
// after 14 days untouched: twice a queue message's 7-day lifetime, longer than any deferral (at most a day).
resource attachmentLifecycle 'Microsoft.Storage/storageAccounts/managementPolicies@2023-05-01' = {
  parent: storage
  name: 'default'
  properties: {
    policy: {
      rules: [
        {
          name: 'orphan-mail-attachments'
          enabled: true
          type: 'Lifecycle'
          definition: {
            filters: {
              blobTypes: [
                'blockBlob'
              ]
              prefixMatch: [
                'mail-attachments/'
              ]
            }
            actions: {
              baseBlob: {
                delete: {
                  daysAfterModificationGreaterThan: 14
                }
              }
            }
          }
        }
      ]
    }
  }
}

resource deploymentContainer 'Microsoft.Storage/storageAccounts/blobServices/containers@2023-05-01' = {
  parent: blobService
  name: deploymentContainerName
  properties: {
    publicAccess: 'None'
  }
}

resource logs 'Microsoft.OperationalInsights/workspaces@2023-09-01' = {
  name: 'log-notifier-${resourceToken}'
  location: location
  tags: tags
  properties: {
    sku: {
      name: 'PerGB2018'
    }
    retentionInDays: logRetentionDays
  }
}

resource insights 'Microsoft.Insights/components@2020-02-02' = {
  name: 'appi-notifier-${resourceToken}'
  location: location
  tags: tags
  kind: 'web'
  properties: {
    Application_Type: 'web'
    WorkspaceResourceId: logs.id
    DisableLocalAuth: true
  }
}

resource vault 'Microsoft.KeyVault/vaults@2023-07-01' = {
  // checkov:skip=CKV_AZURE_109: no VNet in this template, so no firewall rule could admit the Flex app (its outbound addresses are not fixed); access is Entra RBAC only
  // checkov:skip=CKV_AZURE_189: as CKV_AZURE_109: public endpoint, RBAC mode, only the app's identity may read secrets
  name: 'kv-${resourceToken}'
  location: location
  tags: tags
  properties: {
    tenantId: subscription().tenantId
    sku: {
      family: 'A'
      name: 'standard'
    }
    enableRbacAuthorization: true
    enableSoftDelete: true
    softDeleteRetentionInDays: 90
    enablePurgeProtection: true
    publicNetworkAccess: 'Enabled'
    networkAcls: {
      defaultAction: 'Allow'
      bypass: 'AzureServices'
    }
  }
}

resource storageBlobDataOwner 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(storage.id, identity.id, roles.storageBlobDataOwner)
  scope: storage
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.storageBlobDataOwner)
    principalId: identity.properties.principalId
    principalType: 'ServicePrincipal'
  }
}

resource storageQueueDataContributor 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(storage.id, identity.id, roles.storageQueueDataContributor)
  scope: storage
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.storageQueueDataContributor)
    principalId: identity.properties.principalId
    principalType: 'ServicePrincipal'
  }
}

resource storageTableDataContributor 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(storage.id, identity.id, roles.storageTableDataContributor)
  scope: storage
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.storageTableDataContributor)
    principalId: identity.properties.principalId
    principalType: 'ServicePrincipal'
  }
}

resource keyVaultSecretsUser 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(vault.id, identity.id, roles.keyVaultSecretsUser)
  scope: vault
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.keyVaultSecretsUser)
    principalId: identity.properties.principalId
    principalType: 'ServicePrincipal'
  }
}

resource monitoringMetricsPublisher 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(insights.id, identity.id, roles.monitoringMetricsPublisher)
  scope: insights
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', roles.monitoringMetricsPublisher)
    principalId: identity.properties.principalId
    principalType: 'ServicePrincipal'
  }
}

output identityId string = identity.id
output identityClientId string = identity.properties.clientId
output identityPrincipalId string = identity.properties.principalId
output storageAccountName string = storage.name
output blobEndpoint string = storage.properties.primaryEndpoints.blob
output queueEndpoint string = storage.properties.primaryEndpoints.queue
output tableEndpoint string = storage.properties.primaryEndpoints.table
output vaultName string = vault.name
output vaultUri string = vault.properties.vaultUri
// Not a secret: "Ikey unique identifiers aren't security tokens or security keys" (Microsoft Learn, Connection strings
// in Application Insights); ingestion needs the identity's Entra token anyway (DisableLocalAuth).
output insightsConnectionString string = insights.properties.ConnectionString
