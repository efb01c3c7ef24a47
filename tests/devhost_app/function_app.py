"""A small Functions app that exercises the devhost: routes, an output binding, a failing queue, a timer."""

import json
import os
import time

import azure.functions as func

app = func.FunctionApp(http_auth_level=func.AuthLevel.ANONYMOUS)


@app.route(route="items/{id:int}/{name?}", methods=["GET"])
def item(req: func.HttpRequest) -> func.HttpResponse:
    return func.HttpResponse(
        json.dumps({"route": dict(req.route_params), "query": dict(req.params)}), mimetype="application/json"
    )


@app.route(route="items/special", methods=["GET"])
async def special(req: func.HttpRequest) -> func.HttpResponse:
    return func.HttpResponse("literal routes win", status_code=200)


@app.route(route="echo", methods=["POST"])
@app.queue_output(arg_name="out", queue_name="%ECHO_QUEUE%", connection="AzureWebJobsStorage")
def echo(req: func.HttpRequest, out: func.Out[str]) -> func.HttpResponse:
    out.set(req.get_body().decode())
    return func.HttpResponse(status_code=202)


@app.route(route="boom", methods=["GET"])
def boom(req: func.HttpRequest) -> func.HttpResponse:
    raise RuntimeError("the function failed")


@app.queue_trigger(arg_name="message", queue_name="always-fails", connection="AzureWebJobsStorage")
def always_fails(message: func.QueueMessage) -> None:
    with open(os.environ["DEQUEUE_LOG"], "a") as log:
        log.write(f"{message.get_body().decode()} {message.dequeue_count}\n")
    raise ValueError("this function always fails")


@app.timer_trigger(schedule="%TICK_SCHEDULE%", arg_name="timer", run_on_startup=True)
@app.queue_output(arg_name="ticks", queue_name="%TICK_QUEUE%", connection="AzureWebJobsStorage")
def tick(timer: func.TimerRequest, ticks: func.Out[str]) -> None:
    ticks.set(json.dumps({"at": time.time(), "pastDue": timer.past_due}))


@app.queue_trigger(arg_name="message", queue_name="%SLOW_QUEUE%", connection="AzureWebJobsStorage")
async def slow(message: func.QueueMessage) -> None:
    import asyncio

    marker = os.environ["SLOW_LOG"]
    with open(marker, "a") as log:
        log.write("started\n")
    await asyncio.sleep(2)
    with open(marker, "a") as log:
        log.write("finished\n")
