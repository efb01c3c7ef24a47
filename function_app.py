"""The Functions app: every trigger and its binding, each handing over to `shared` in one call."""

import azure.functions as func

from shared import functions as handlers

# invalid or missing settings, or a bad routing file, stop the app at start-up with a message naming them
handlers.start_up()

app = func.FunctionApp(http_auth_level=func.AuthLevel.FUNCTION)


@app.route(route="mail", methods=["POST"])
async def post_mail(req: func.HttpRequest) -> func.HttpResponse:
    return await handlers.post_mail(req)


@app.route(route="mail/{id}", methods=["GET"])
async def get_mail(req: func.HttpRequest) -> func.HttpResponse:
    return await handlers.get_mail(req)


@app.route(route="alerts/{source?}", methods=["POST"])
async def post_alerts(req: func.HttpRequest) -> func.HttpResponse:
    return await handlers.post_alerts(req)


@app.route(route="digests/{name}/run", methods=["POST"])
async def run_digest(req: func.HttpRequest) -> func.HttpResponse:
    return await handlers.run_digest(req)


@app.route(route="health", methods=["GET"], auth_level=func.AuthLevel.ANONYMOUS)
async def health(req: func.HttpRequest) -> func.HttpResponse:
    return await handlers.health(req)


@app.route(route="health/details", methods=["GET"])
async def health_details(req: func.HttpRequest) -> func.HttpResponse:
    return await handlers.health_details(req)


@app.route(route="openapi.json", methods=["GET"], auth_level=func.AuthLevel.ANONYMOUS)
async def openapi(req: func.HttpRequest) -> func.HttpResponse:
    return await handlers.openapi(req)


@app.queue_trigger(arg_name="message", queue_name="mail-outbox", connection="AzureWebJobsStorage")
async def mail_outbox(message: func.QueueMessage) -> None:
    await handlers.mail_outbox(message)


@app.queue_trigger(arg_name="message", queue_name="alerts-inbox", connection="AzureWebJobsStorage")
async def alerts_inbox(message: func.QueueMessage) -> None:
    await handlers.alerts_inbox(message)


@app.queue_trigger(arg_name="message", queue_name="alerts-flush", connection="AzureWebJobsStorage")
async def alerts_flush(message: func.QueueMessage) -> None:
    await handlers.alerts_flush(message)


@app.timer_trigger(arg_name="timer", schedule="%ALERT_DIGEST_SCHEDULE%")
async def alert_digest(timer: func.TimerRequest) -> None:
    await handlers.alert_digest(timer)


@app.timer_trigger(arg_name="timer", schedule="%MAILBOX_DIGEST_SCHEDULE%")
async def mailbox_digest(timer: func.TimerRequest) -> None:
    await handlers.mailbox_digest(timer)
