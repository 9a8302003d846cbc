"""Calls SchedulerService.GetInfo through the generated Python stubs.

Usage: getinfo.py SOCKET EXPECTED_NODE (PYTHONPATH must include libs/api/python).
"""
import sys

import grpc

from zlayer.scheduler.v1 import scheduler_pb2, scheduler_pb2_grpc


def main() -> int:
    sock, node = sys.argv[1], sys.argv[2]
    with grpc.insecure_channel("unix://" + sock) as channel:
        stub = scheduler_pb2_grpc.SchedulerServiceStub(channel)
        resp = stub.GetInfo(scheduler_pb2.GetInfoRequest(), timeout=10)
    info = resp.info
    if info.component != "scheduler" or info.node != node or info.pid <= 0:
        print(f"unexpected answer: {info}", file=sys.stderr)
        return 1
    print(f"component={info.component} node={info.node} version={info.version}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
