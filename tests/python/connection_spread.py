"""How gRPC load spreads over replicas behind a plain Kubernetes Service, measured.

A Service balances TCP connections, not calls (kube-proxy picks a pod per connection). This
starts three identity servers, a round-robin TCP proxy in front of them standing in for the
Service, and one grpcio client calling through it, as a partner's long-lived channel would.
Phase 1 runs with two replicas; phase 2 adds the third (a scale-up). Each server logs every
call it serves (debug "rpc" lines), which gives each replica's share per phase. Run with
LIANYU_MAX_CONNECTION_AGE short (the servers close each connection gracefully at that age)
and long (never within the run), to compare.

    python tests/python/connection_spread.py target/debug/lianyu-identity 3s 20
"""

import asyncio
import json
import os
import subprocess
import sys
import tempfile
import threading
import time

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


def free_port():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Proxy:
    """Round-robin per connection over a list of backends that can grow (kube-proxy)."""

    def __init__(self):
        self.backends = []
        self.next = 0
        self.port = free_port()

    async def handle(self, reader, writer):
        port = self.backends[self.next % len(self.backends)]
        self.next += 1
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            writer.close()
            return

        async def pipe(src, dst):
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                dst.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    def run(self, ready):
        async def main():
            server = await asyncio.start_server(self.handle, "127.0.0.1", self.port)
            ready.set()
            async with server:
                await server.serve_forever()

        asyncio.run(main())


def start(binary, age, data):
    port = free_port()
    log = open(os.path.join(data, f"{port}.log"), "w")
    env = dict(
        os.environ,
        LIANYU_MODE="local",
        LIANYU_LISTEN=f"127.0.0.1:{port}",
        LIANYU_DATA_DIR=os.path.join(data, str(port)),
        LIANYU_MAX_CONNECTION_AGE=age,
        RUST_LOG="warn,lianyu_kit::telemetry=debug",
    )
    env.pop("OTEL_EXPORTER_OTLP_ENDPOINT", None)
    process = subprocess.Popen([binary], env=env, stdout=log, stderr=subprocess.DEVNULL)
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    grpc.channel_ready_future(channel).result(timeout=30)
    channel.close()
    return port, process, log.name


def served(logs):
    counts = {}
    for port, path in logs.items():
        with open(path) as f:
            counts[port] = sum(
                1
                for line in f
                if line.startswith("{") and json.loads(line).get("message") == "rpc"
            )
    return counts


def main():
    binary, age, seconds = sys.argv[1], sys.argv[2], float(sys.argv[3])
    data = tempfile.mkdtemp()
    servers = [start(binary, age, data) for _ in range(3)]
    logs = {port: path for port, _, path in servers}
    proxy = Proxy()
    proxy.backends = [servers[0][0], servers[1][0]]
    ready = threading.Event()
    threading.Thread(target=proxy.run, args=(ready,), daemon=True).start()
    ready.wait()

    channel = grpc.insecure_channel(f"127.0.0.1:{proxy.port}")
    health = health_pb2_grpc.HealthStub(channel)
    before = served(logs)
    shares = []
    for phase, backends in enumerate([[servers[0][0], servers[1][0]], [s[0] for s in servers]], 1):
        proxy.backends = backends
        start_counts = served(logs)
        until = time.monotonic() + seconds
        calls = failed = 0
        while time.monotonic() < until:
            try:
                health.Check(health_pb2.HealthCheckRequest(), timeout=5)
                calls += 1
            except grpc.RpcError:
                failed += 1
        time.sleep(0.5)
        end_counts = served(logs)
        per = [end_counts[p] - start_counts[p] for p, _, _ in servers]
        total = sum(per) or 1
        shares.append(per)
        print(
            f"max_connection_age={age} phase {phase} ({len(backends)} replicas, {seconds:.0f} s): "
            f"{calls} calls, {failed} failed; served per replica: "
            + ", ".join(f"{n} ({100 * n / total:.0f} %)" for n in per)
        )
    channel.close()
    for _, process, _ in servers:
        process.terminate()
        process.wait()
    del before


if __name__ == "__main__":
    main()
