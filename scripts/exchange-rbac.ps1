#Requires -Version 7.0
#Requires -Modules ExchangeOnlineManagement, Microsoft.Graph.Applications
<#
.SYNOPSIS
    Limits the notifier's Graph mail permissions to the mailboxes it uses (Exchange Online RBAC for
    Applications), checks the result, then removes the tenant-wide Entra grant.

.DESCRIPTION
    Admin step 2 of docs/deploy.md. Run it after scripts/entra-app.sh. It:
      1. registers the app's service principal in Exchange Online (New-ServicePrincipal);
      2. creates or updates a management scope with exactly the sending mailboxes (New-/Set-ManagementScope),
         and a second one with the mailboxes the app reads and writes: the sending mailboxes (the exactly-once
         draft delivery and bounce tracking; left out with -SendMailOnly) and the digests' mailboxes;
      3. assigns "Application Mail.Send" on the first scope and "Application Mail.ReadWrite" on the second
         (New-ManagementRoleAssignment -App -Role -CustomResourceScope);
      4. checks every mailbox is in scope (Test-ServicePrincipalAuthorization), and that -OutsideMailbox is not;
      5. removes the tenant-wide Mail.* application grants in Entra (Remove-MgServicePrincipalAppRoleAssignment),
         which would otherwise still allow every mailbox of the tenant: Entra grants and Exchange grants add up.
    Each step looks first and changes only what differs, so running it again changes nothing. It prints what it
    will do before doing it; -WhatIf shows the plan and changes nothing.

.EXAMPLE
    ./scripts/exchange-rbac.ps1 -AppId $env:GRAPH_CLIENT_ID -Mailboxes notifications@contoso.com `
        -DigestMailboxes support@contoso.com -OutsideMailbox ceo@contoso.com
#>
[CmdletBinding(SupportsShouldProcess = $true)]
param(
    # Application (client) id: GRAPH_CLIENT_ID (keyvault mode) or AZURE_IDENTITY_CLIENT_ID (managed_identity mode)
    [Parameter(Mandatory = $true)]
    [string] $AppId,

    # Mailboxes the app sends from: MAIL_DEFAULT_SENDER and MAIL_ALLOWED_SENDERS
    [Parameter(Mandatory = $true)]
    [string[]] $Mailboxes,

    # Mailboxes the mailbox digests read and tag (config/notify.yaml digests[].mailbox); none = no digests
    [string[]] $DigestMailboxes = @(),

    # A mailbox that must stay out of reach, to prove the scope works
    [string] $OutsideMailbox = '',

    # Entra tenant (id or domain); the signed-in admin's by default
    [string] $TenantId = '',

    # Prefix of the Exchange scope and assignment names
    [string] $Name = 'graph-mail-notifier',

    # Keep the tenant-wide Entra grant (not recommended: every mailbox stays reachable)
    [switch] $KeepTenantWideGrant,

    # No Mail.ReadWrite on the sending mailboxes: the app then sends with sendMail (MAIL_DELIVERY_MODE auto
    # falls back to it), where a retry after a lost answer can duplicate a mail, and bounces are not tracked
    [switch] $SendMailOnly
)

$ErrorActionPreference = 'Stop'
$ReadWriteMailboxes = [System.Collections.Generic.List[string]]::new()
foreach ($mailbox in @(if (-not $SendMailOnly) { $Mailboxes }) + $DigestMailboxes) {
    if (-not $ReadWriteMailboxes.Contains($mailbox)) { $ReadWriteMailboxes.Add($mailbox) }
}
$GraphAppId = '00000003-0000-0000-c000-000000000000'  # Microsoft Graph's well-known application id

function Get-RecipientFilter([string[]] $Addresses) {
    $terms = foreach ($address in $Addresses) {
        $quoted = $address.Replace("'", "''")
        "PrimarySmtpAddress -eq '$quoted'"
    }
    return ($terms -join ' -or ')
}

function Set-NotifierScope([string] $ScopeName, [string[]] $Addresses) {
    # Setting the same filter again changes nothing, so an existing scope is simply set to the wanted list.
    $filter = Get-RecipientFilter $Addresses
    $existing = Get-ManagementScope | Where-Object { $_.Name -eq $ScopeName }
    if ($null -eq $existing) {
        if ($PSCmdlet.ShouldProcess($ScopeName, "create management scope ($filter)")) {
            New-ManagementScope -Name $ScopeName -RecipientRestrictionFilter $filter | Out-Null
        }
    }
    elseif ($PSCmdlet.ShouldProcess($ScopeName, "set management scope to ($filter)")) {
        Set-ManagementScope -Identity $ScopeName -RecipientRestrictionFilter $filter
    }
}

function Set-NotifierAssignment([string] $AssignmentName, [string] $Role, [string] $ScopeName, [string] $PrincipalId) {
    $existing = Get-ManagementRoleAssignment -Role $Role | Where-Object { $_.Name -eq $AssignmentName }
    if ($null -eq $existing) {
        if ($PSCmdlet.ShouldProcess($AssignmentName, "assign '$Role' on scope $ScopeName")) {
            New-ManagementRoleAssignment -Name $AssignmentName -App $PrincipalId -Role $Role -CustomResourceScope $ScopeName | Out-Null
        }
    }
    else {
        Write-Host "  assignment $AssignmentName ('$Role' on $ScopeName) exists"
    }
}

function Test-NotifierScope([string] $PrincipalId, [string] $Mailbox, [string] $Role, [bool] $Expected) {
    $rows = Test-ServicePrincipalAuthorization -Identity $PrincipalId -Resource $Mailbox | Where-Object { $_.RoleName -eq $Role }
    $inScope = @($rows | Where-Object { "$($_.InScope)" -eq 'True' }).Count -gt 0
    $verdict = if ($inScope -eq $Expected) { 'ok' } else { 'WRONG' }
    Write-Host "  $Role on ${Mailbox}: in scope = $inScope ($verdict)"
    return ($inScope -eq $Expected)
}

Write-Host @"
This script will, for app $AppId:
  - register its service principal in Exchange Online (if not yet there);
  - scope "Application Mail.Send" to: $($Mailboxes -join ', ')
$(if ($ReadWriteMailboxes.Count -gt 0) { "  - scope `"Application Mail.ReadWrite`" to: $($ReadWriteMailboxes -join ', ')" } else { '  - grant no mailbox read access (-SendMailOnly, no -DigestMailboxes)' })
  - check the scopes with Test-ServicePrincipalAuthorization
$(if ($KeepTenantWideGrant) { '  - KEEP the tenant-wide Entra Mail.* grant (-KeepTenantWideGrant)' } else { '  - then remove the tenant-wide Entra Mail.* grant, so the scopes are what applies' })
Sign-in prompts follow: Microsoft Graph (AppRoleAssignment.ReadWrite.All), then Exchange Online.
"@

if ($TenantId) {
    Connect-MgGraph -Scopes 'Application.Read.All', 'AppRoleAssignment.ReadWrite.All' -TenantId $TenantId -NoWelcome
}
else {
    Connect-MgGraph -Scopes 'Application.Read.All', 'AppRoleAssignment.ReadWrite.All' -NoWelcome
}
Connect-ExchangeOnline -ShowBanner:$false

try {
    $servicePrincipal = Get-MgServicePrincipal -Filter "appId eq '$AppId'"
    if ($null -eq $servicePrincipal) {
        throw "No service principal for app $AppId in this tenant: run scripts/entra-app.sh first."
    }
    $principalId = $servicePrincipal.Id

    Write-Host '1. Exchange service principal'
    $exchangePrincipal = Get-ServicePrincipal | Where-Object { $_.AppId -eq $AppId }
    if ($null -eq $exchangePrincipal) {
        if ($PSCmdlet.ShouldProcess($AppId, 'register the service principal in Exchange Online')) {
            New-ServicePrincipal -AppId $AppId -ObjectId $principalId -DisplayName $servicePrincipal.DisplayName | Out-Null
        }
    }
    else {
        Write-Host "  already registered ($($servicePrincipal.DisplayName))"
    }

    Write-Host '2. Management scopes and 3. role assignments'
    Set-NotifierScope "$Name-send" $Mailboxes
    Set-NotifierAssignment "$Name-mail-send" 'Application Mail.Send' "$Name-send" $principalId
    if ($ReadWriteMailboxes.Count -gt 0) {
        Set-NotifierScope "$Name-digest" $ReadWriteMailboxes
        Set-NotifierAssignment "$Name-mail-readwrite" 'Application Mail.ReadWrite' "$Name-digest" $principalId
    }

    if ($WhatIfPreference) {
        Write-Host 'WhatIf: nothing was changed; the checks and the grant removal are skipped.'
        return
    }

    Write-Host '4. Checks (Exchange can take up to an hour to apply new assignments everywhere)'
    $allGood = $true
    foreach ($mailbox in $Mailboxes) {
        $allGood = (Test-NotifierScope $principalId $mailbox 'Application Mail.Send' $true) -and $allGood
    }
    foreach ($mailbox in $ReadWriteMailboxes) {
        $allGood = (Test-NotifierScope $principalId $mailbox 'Application Mail.ReadWrite' $true) -and $allGood
    }
    if ($OutsideMailbox) {
        $allGood = (Test-NotifierScope $principalId $OutsideMailbox 'Application Mail.Send' $false) -and $allGood
    }
    if (-not $allGood) {
        throw 'The scopes do not say what they should; the tenant-wide grant was left in place.'
    }

    Write-Host '5. Tenant-wide Entra grant'
    if ($KeepTenantWideGrant) {
        Write-Warning 'Kept (-KeepTenantWideGrant): the app can still reach every mailbox of the tenant.'
    }
    else {
        $graph = Get-MgServicePrincipal -Filter "appId eq '$GraphAppId'"
        $mailRoles = @($graph.AppRoles | Where-Object { $_.Value -in @('Mail.Send', 'Mail.ReadWrite', 'Mail.Read') } | ForEach-Object { $_.Id })
        $grants = @(Get-MgServicePrincipalAppRoleAssignment -ServicePrincipalId $principalId -All | Where-Object { $_.ResourceId -eq $graph.Id -and $_.AppRoleId -in $mailRoles })
        if ($grants.Count -eq 0) {
            Write-Host '  none left: Exchange RBAC alone decides which mailboxes the app reaches'
        }
        foreach ($grant in $grants) {
            if ($PSCmdlet.ShouldProcess($grant.Id, 'remove the tenant-wide Graph app role grant')) {
                Remove-MgServicePrincipalAppRoleAssignment -ServicePrincipalId $principalId -AppRoleAssignmentId $grant.Id
            }
        }
        Write-Host '  Re-run scripts/entra-app.sh with --scoped from now on, so it does not grant them again.'
    }
}
finally {
    Disconnect-ExchangeOnline -Confirm:$false
    Disconnect-MgGraph | Out-Null
}
