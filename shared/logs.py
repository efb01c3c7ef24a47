"""What the app logs. Azure's Python worker forwards every record at INFO and above from the root logger to
Application Insights, where the SDKs' request/response logging would be most of the bill (14 of 16 records of
one delivered mail): the libraries log at LIBRARY_LOG_LEVEL (WARNING unless set), the app's own `notifier`
loggers at INFO."""

from __future__ import annotations

import logging

LIBRARY_LOGGERS = (
    "azure",  # azure-core's pipeline, azure-identity, Storage, Key Vault
    "azure.core.pipeline.policies.http_logging_policy",
    "msal",
    "httpx",
    "httpcore",
    "kiota_abstractions",
    "kiota_http",
    "kiota_authentication_azure",
    "msgraph",
    "msgraph_core",
    "aiohttp",
    "urllib3",
)


def quiet_libraries(level: str) -> None:
    """Set every library logger the app's dependencies use to `level` (a logging level name)."""
    for name in LIBRARY_LOGGERS:
        logging.getLogger(name).setLevel(level)
