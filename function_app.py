"""The Functions app: every trigger and its binding, each handing over to `shared` in one call.

Routes, queue names and schedules come from `shared.routes`, the table the OpenAPI document is built from.
"""

from collections.abc import Callable
from typing import Any

import azure.functions as func

from shared import functions as handlers
from shared import routes

# invalid or missing settings, or a bad routing file, are named in one log message; the functions are still
# indexed and answer 503 not_configured (health: config failing) until they are fixed
handlers.start_up()

app = func.FunctionApp(http_auth_level=func.AuthLevel.FUNCTION)


def http(route: routes.Route) -> Callable[..., Any]:
    """The HTTP trigger of one route of the table."""
    return app.route(route=route.template, methods=route.methods, auth_level=route.auth_level)


@http(routes.POST_MAIL)
async def post_mail(req: func.HttpRequest) -> func.HttpResponse:
    return await handlers.post_mail(req)


@http(routes.GET_MAIL)
async def get_mail(req: func.HttpRequest) -> func.HttpResponse:
    return await handlers.get_mail(req)


@http(routes.POST_ALERTS)
async def post_alerts(req: func.HttpRequest) -> func.HttpResponse:
    return await handlers.post_alerts(req)


@http(routes.RUN_DIGEST)
async def run_digest(req: func.HttpRequest) -> func.HttpResponse:
    return await handlers.run_digest(req)


@http(routes.RUN_ALERT_DIGEST)
async def run_alert_digest(req: func.HttpRequest) -> func.HttpResponse:
    return await handlers.run_alert_digest(req)


@http(routes.HEALTH)
async def health(req: func.HttpRequest) -> func.HttpResponse:
    return await handlers.health(req)


@http(routes.HEALTH_DETAILS)
async def health_details(req: func.HttpRequest) -> func.HttpResponse:
    return await handlers.health_details(req)


@http(routes.OPENAPI)
async def openapi(req: func.HttpRequest) -> func.HttpResponse:
    return await handlers.openapi(req)


@http(routes.FALLBACK)
async def no_such_route(req: func.HttpRequest) -> func.HttpResponse:
    return await handlers.no_such_route(req)


@app.queue_trigger(arg_name="message", queue_name=routes.MAIL_OUTBOX, connection="AzureWebJobsStorage")
async def mail_outbox(message: func.QueueMessage) -> None:
    await handlers.mail_outbox(message)


@app.queue_trigger(arg_name="message", queue_name=routes.ALERTS_INBOX, connection="AzureWebJobsStorage")
async def alerts_inbox(message: func.QueueMessage) -> None:
    await handlers.alerts_inbox(message)


@app.queue_trigger(arg_name="message", queue_name=routes.ALERTS_FLUSH, connection="AzureWebJobsStorage")
async def alerts_flush(message: func.QueueMessage) -> None:
    await handlers.alerts_flush(message)


@app.timer_trigger(arg_name="timer", schedule=routes.DIGEST_TICK)
async def digest_timer(timer: func.TimerRequest) -> None:
    await handlers.digest_timer(timer)


@app.timer_trigger(arg_name="timer", schedule=routes.BOUNCE_CHECK_SCHEDULE)
async def bounce_check(timer: func.TimerRequest) -> None:
    await handlers.bounce_check(timer)
