"""`ref2img task`: look at, wait for and cancel a task on a server or the cloud."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from ref2img.cli._common import (
    AppKeyOption,
    AppSecretOption,
    CloudOption,
    ServerOption,
    TaskIdArgument,
    err,
    new_group,
    out,
    sdk_call,
    sdk_client,
)

app = new_group("Look at, wait for and cancel tasks on a server or the cloud.")


def task_record(task) -> dict:
    return {
        "task_id": task.task_id,
        "status": int(task.status),
        "status_name": task.status.name.lower(),
        "progress": task.progress,
        "position": task.position,
        "wait_time": task.wait_time,
        "reason": task.reason,
        "params": task.params,
        "images": task.images,
        "masks": task.masks,
    }


def print_task(task, as_json: bool) -> None:
    if as_json:
        print(json.dumps(task_record(task)))
        return
    out.print(
        f"{task.task_id}: {task.status.name.lower()} ({task.progress}%)"
        + (f", position {task.position}" if task.status == 1 else "")
        + (f" — {task.reason}" if task.reason else ""),
        highlight=False,
    )
    for url in task.images or task.masks:
        out.print(url, highlight=False, soft_wrap=True)


@app.command("get")
def task_get(
    task_id: TaskIdArgument,
    server: ServerOption = None,
    cloud: CloudOption = False,
    app_key: AppKeyOption = None,
    app_secret: AppSecretOption = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """The task's state now."""
    with sdk_client(server, cloud, app_key, app_secret) as client:
        print_task(sdk_call(client.get, task_id), as_json)


@app.command("wait")
def task_wait(
    task_id: TaskIdArgument,
    server: ServerOption = None,
    cloud: CloudOption = False,
    app_key: AppKeyOption = None,
    app_secret: AppSecretOption = None,
    timeout: Annotated[float, typer.Option("--timeout")] = 600.0,
    out_dir: Annotated[Path | None, typer.Option("--out", "-o", metavar="DIR", help="download the images here")] = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Wait until the task ends (exit 1 if it failed, was cancelled or timed out); optionally download."""
    with sdk_client(server, cloud, app_key, app_secret) as client:
        task = sdk_call(client.wait, task_id, timeout=timeout)
        if out_dir is not None:
            for path in sdk_call(client.download, task, out_dir):
                err.print(str(path), highlight=False)
    print_task(task, as_json)


@app.command("cancel")
def task_cancel(
    task_id: TaskIdArgument,
    server: ServerOption = None,
    app_key: AppKeyOption = None,
    app_secret: AppSecretOption = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Cancel a task (ref2img servers): queued ones at once, running ones between two steps."""
    with sdk_client(server, False, app_key, app_secret) as client:
        print_task(sdk_call(client.cancel, task_id), as_json)
