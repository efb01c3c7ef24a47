// The Function App on a Flex Consumption (FC1) plan: Linux, Python 3.11, the user-assigned identity, the
// package deployed from a blob container through that identity, HTTPS only, TLS 1.2, FTP and basic
// publishing credentials off. Its app settings come in whole from main.bicep (`appSettings`).

@description('Region of every resource.')
param location string

@description('Tags of every resource.')
param tags object

@description('Short unique suffix of the resource names.')
param resourceToken string

@description('Resource id of the user-assigned managed identity the app runs as.')
param identityId string

@description('Blob endpoint of the Storage account (https://<account>.blob.core.windows.net/).')
param blobEndpoint string

@description('Blob container the package is deployed from.')
param deploymentContainerName string

@description('Every app setting, name to value (main.bicep: appSettings).')
param appSettings object

@description('Memory of one instance in MB (Flex Consumption: 512, 2048 or 4096).')
@allowed([512, 2048, 4096])
param instanceMemoryMB int = 2048

@description('Most instances the plan scales out to; also caps the cost of a flood of requests.')
@minValue(1)
@maxValue(1000)
param maximumInstanceCount int = 40

resource plan 'Microsoft.Web/serverfarms@2024-04-01' = {
  // checkov:skip=CKV_AZURE_225: zone redundancy on Flex Consumption needs always-ready instances (a cost at idle) and is not offered in every Flex region; the app scales from zero instead
  name: 'plan-notifier-${resourceToken}'
  location: location
  tags: tags
  kind: 'functionapp'
  sku: {
    name: 'FC1'
    tier: 'FlexConsumption'
  }
  properties: {
    reserved: true // Linux
  }
}

resource site 'Microsoft.Web/sites@2024-04-01' = {
  // checkov:skip=CKV_AZURE_222: the webhooks must be reachable by Alertmanager, Grafana and Azure Monitor; every route but health and openapi.json needs a function key
  // checkov:skip=CKV_AZURE_17: callers authenticate with function keys (Azure Monitor action groups cannot present client certificates)
  // checkov:skip=CKV_AZURE_212: Flex Consumption scales from zero; a minimum instance count (always ready) is a cost at idle this app does not need
  // checkov:skip=CKV_AZURE_213: /api/health checks Graph and Key Vault too; a platform health check would recycle healthy instances during a Graph outage
  name: 'func-notifier-${resourceToken}'
  location: location
  tags: union(tags, { 'azd-service-name': 'api' })
  kind: 'functionapp,linux'
  identity: {
    type: 'UserAssigned'
    userAssignedIdentities: {
      '${identityId}': {}
    }
  }
  properties: {
    serverFarmId: plan.id
    httpsOnly: true
    keyVaultReferenceIdentity: identityId
    siteConfig: {
      minTlsVersion: '1.2'
      scmMinTlsVersion: '1.2'
      ftpsState: 'Disabled'
      http20Enabled: true
    }
    functionAppConfig: {
      deployment: {
        storage: {
          type: 'blobContainer'
          value: '${blobEndpoint}${deploymentContainerName}'
          authentication: {
            type: 'UserAssignedIdentity'
            userAssignedIdentityResourceId: identityId
          }
        }
      }
      scaleAndConcurrency: {
        instanceMemoryMB: instanceMemoryMB
        maximumInstanceCount: maximumInstanceCount
      }
      runtime: {
        name: 'python'
        version: '3.11'
      }
    }
  }
}

resource settings 'Microsoft.Web/sites/config@2024-04-01' = {
  // These checks read a 'web' config; this is the 'appsettings' one, and logs go to Application Insights:
  // checkov:skip=CKV_AZURE_63: App Service HTTP logging (IIS-style) does not apply; requests are logged by the Functions host to Application Insights
  // checkov:skip=CKV_AZURE_65: detailed error pages are an App Service (IIS) feature; errors go to Application Insights
  // checkov:skip=CKV_AZURE_66: failed request tracing is an App Service (IIS) feature; failures go to Application Insights
  // checkov:skip=CKV_AZURE_80: not a .NET app (Python 3.11)
  // checkov:skip=CKV_AZURE_88: Flex Consumption runs the package from a blob container; it has no Azure Files content share
  // checkov:skip=CKV_AZURE_13: App Service Authentication would refuse the webhook callers, which authenticate with function keys
  // checkov:skip=CKV_AZURE_222: see the site: the webhooks must be reachable
  parent: site
  name: 'appsettings'
  properties: appSettings
}

// No FTP and no username/password publishing: azd and Core Tools publish with Entra tokens.
resource ftpCredentials 'Microsoft.Web/sites/basicPublishingCredentialsPolicies@2024-04-01' = {
  parent: site
  name: 'ftp'
  properties: {
    allow: false
  }
}

resource scmCredentials 'Microsoft.Web/sites/basicPublishingCredentialsPolicies@2024-04-01' = {
  parent: site
  name: 'scm'
  properties: {
    allow: false
  }
}

output name string = site.name
output defaultHostName string = site.properties.defaultHostName
