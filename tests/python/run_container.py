#!/usr/bin/env python3
"""Runs one container through supd's gRPC API, as any Python program would, and prints a JSON
summary for the Rust test that started it (tests/tests/python_client.rs).

Needs grpcio and the modules generated from proto/ (`sup.v1.*_pb2`, `*_pb2_grpc`) on
PYTHONPATH. Steps: import an image archive (Images.Import, streamed), create a container with
overrides, create its task, attach before starting it, read stdout and stderr until the exit
frame, then Wait, Get, Delete the task and the container.

The channel is grpc-core's with default options, as any Python program would open it: for a
`unix:PATH` target grpc-core (1.57 and later) sends the %-encoded socket path as `:authority`,
which supd accepts.
"""

import argparse
import json
import sys
import threading

import grpc

from sup.v1 import containers_pb2, containers_pb2_grpc
from sup.v1 import images_pb2, images_pb2_grpc
from sup.v1 import tasks_pb2, tasks_pb2_grpc

CHUNK = 256 * 1024
TIMEOUT = 120


def import_requests(archive, name):
    yield images_pb2.ImportRequest(options=images_pb2.ImportOptions(name=name))
    with open(archive, "rb") as f:
        while True:
            chunk = f.read(CHUNK)
            if not chunk:
                return
            yield images_pb2.ImportRequest(chunk=chunk)


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--socket", required=True)
    parser.add_argument("--namespace", required=True)
    parser.add_argument("--archive", required=True)
    parser.add_argument("--image", required=True)
    parser.add_argument("--id", required=True)
    parser.add_argument("--script", required=True, help="what `sh -c` runs in the container")
    args = parser.parse_args()

    channel = grpc.insecure_channel("unix:" + args.socket)
    grpc.channel_ready_future(channel).result(timeout=10)
    md = (("sup-namespace", args.namespace),)
    images = images_pb2_grpc.ImagesStub(channel)
    containers = containers_pb2_grpc.ContainersStub(channel)
    tasks = tasks_pb2_grpc.TasksStub(channel)

    result = None
    stages = []
    for resp in images.Import(
        import_requests(args.archive, args.image), metadata=md, timeout=TIMEOUT
    ):
        if resp.HasField("result"):
            result = resp.result
        elif resp.HasField("progress"):
            stages.append(resp.progress.stage)
    if result is None:
        sys.exit("Images.Import ended without a result")

    config = containers_pb2.ContainerConfig(
        entrypoint=containers_pb2.StringList(values=[]),
        command=containers_pb2.StringList(values=["sh", "-c", args.script]),
    )
    containers.Create(
        containers_pb2.CreateContainerRequest(
            container=containers_pb2.Container(id=args.id, image=args.image), config=config
        ),
        metadata=md,
        timeout=TIMEOUT,
    )
    created = tasks.Create(
        tasks_pb2.CreateTaskRequest(container_id=args.id), metadata=md, timeout=TIMEOUT
    )

    # The request side of Attach stays open until the output has been read: ending it early
    # would detach.
    finished = threading.Event()

    def attach_requests():
        yield tasks_pb2.AttachRequest(
            options=tasks_pb2.AttachOptions(container_id=args.id, stdout=True, stderr=True)
        )
        finished.wait(TIMEOUT)

    responses = tasks.Attach(attach_requests(), metadata=md, timeout=TIMEOUT)
    # Headers arrive once the daemon has connected the attach: only then start.
    responses.initial_metadata()
    started = tasks.Start(
        tasks_pb2.StartRequest(container_id=args.id), metadata=md, timeout=TIMEOUT
    )
    stdout, stderr, attach_exit = bytearray(), bytearray(), None
    for resp in responses:
        if resp.HasField("output"):
            if resp.output.stream == tasks_pb2.STD_STREAM_STDERR:
                stderr.extend(resp.output.data)
            else:
                stdout.extend(resp.output.data)
        elif resp.HasField("exit"):
            attach_exit = resp.exit.exit_status
    finished.set()

    waited = tasks.Wait(tasks_pb2.WaitRequest(container_id=args.id), metadata=md, timeout=TIMEOUT)
    got = tasks.Get(tasks_pb2.GetTaskRequest(container_id=args.id), metadata=md, timeout=TIMEOUT)
    deleted = tasks.Delete(
        tasks_pb2.DeleteTaskRequest(container_id=args.id), metadata=md, timeout=TIMEOUT
    )
    containers.Delete(
        containers_pb2.DeleteContainerRequest(id=args.id), metadata=md, timeout=TIMEOUT
    )
    left = containers.List(containers_pb2.ListContainersRequest(), metadata=md, timeout=TIMEOUT)

    print(
        json.dumps(
            {
                "grpc_version": grpc.__version__,
                "imported": [image.name for image in result.images],
                "import_stages": stages,
                "create_pid": created.pid,
                "start_pid": started.pid,
                "stdout_hex": bytes(stdout).hex(),
                "stderr_hex": bytes(stderr).hex(),
                "attach_exit": attach_exit,
                "wait_exit": waited.exit_status,
                "status_after_exit": tasks_pb2.TaskStatus.Name(got.process.status),
                "delete_exit": deleted.exit_status,
                "containers_left": [c.id for c in left.containers],
            }
        )
    )


if __name__ == "__main__":
    try:
        main()
    except grpc.RpcError as e:
        sys.exit(f"gRPC call failed: {e.code().name}: {e.details()}")
