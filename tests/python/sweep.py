"""Every RPC of every service, called from outside the way a careless or hostile caller would:
without a token, with a forged or an unsigned one, with an empty request, and with requests
whose fields hold garbage (names that point nowhere or escape their parent, huge and negative
numbers, unknown enum values, long and odd strings), as each kind of caller (a partner,
another partner, a store-scoped token, the operator); a second pass aims the garbage at the
resource names the first pass's answers held.

No call may end in INTERNAL, UNKNOWN, UNIMPLEMENTED or DATA_LOSS, or take the mesh down; every
call without a valid token but the two public ones must be UNAUTHENTICATED; every
INVALID_ARGUMENT must name the fields at fault (a BadRequest detail with at least one field
violation); and every answer must fit what gRPC's C core (Python's client) accepts — a bad
request of megabytes still gets its INVALID_ARGUMENT, not RESOURCE_EXHAUSTED "received
metadata size exceeds…".

Usage: sweep.py PATH/TO/lianyu [ROUNDS]
It starts `lianyu up` on a fresh data directory (the demo makes partners, members, a
livestream and a campaign to aim at) and stops it with SIGTERM at the end. CI runs it through
scripts/python-client.sh (SWEEP_ROUNDS, 3 by default: about 45 s on the debug build).
"""

import base64
import collections
import random
import signal
import subprocess
import sys
import tempfile

import grpc
from google.protobuf import descriptor as pbd
from google.protobuf import message_factory
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from partner_client import Contracts, start_mesh

BAD = {
    grpc.StatusCode.INTERNAL,
    grpc.StatusCode.UNKNOWN,
    grpc.StatusCode.UNIMPLEMENTED,
    grpc.StatusCode.DATA_LOSS,
}
# Calls that are made without a token on purpose.
OPEN = {
    "lianyu.identity.v1.AuthService/IssueToken",
    # The public keys tokens are verified with (a JWKS), for anyone to fetch.
    "lianyu.identity.v1.AuthService/GetSigningKeys",
}
STRINGS = [
    "",
    "partners/aurora-shoes",
    "partners/jade-plaza",
    "partners/jade-plaza/stores/flagship",
    "sessions/-",
    "sessions/../partners/aurora-shoes",
    "members/" + "9" * 40,
    "benefits/%00",
    "campaigns/x/../../y",
    "operations/" + "a" * 300,
    "\u0000\u202e\ud7ff",
    "聯域" * 50,
    "x" * 70_000,
    "-1",
    "2026-13-45T99:99:99Z",
    "{\"$ne\": null}",
    "' OR 1=1 --",
]
# Resource names the mesh answered with (the demo's partners, members, sessions, benefits,
# campaigns…): the second pass aims garbage at things that exist.
HARVESTED = set()
INTS = [0, 1, -1, 2**31 - 1, -(2**31), 10**9]
INT64S = INTS + [2**63 - 1, -(2**63)]


def fill(msg, rng, depth=0, sparse=False):
    """Puts garbage in some of `msg`'s fields (and in its nested messages, two levels deep);
    `sparse`: in fewer of them, so that more calls get past validation to what they aim at."""
    for field in msg.DESCRIPTOR.fields:
        if rng.random() < (0.6 if sparse else 0.35):
            continue
        repeated = field.is_repeated
        if field.type == pbd.FieldDescriptor.TYPE_MESSAGE:
            if depth >= 2 or field.message_type.GetOptions().map_entry:
                continue
            if repeated:
                for _ in range(rng.choice([1, 3])):
                    fill(getattr(msg, field.name).add(), rng, depth + 1, sparse)
            else:
                fill(getattr(msg, field.name), rng, depth + 1, sparse)
            continue
        values = [scalar(field, rng) for _ in range(rng.choice([1, 2, 50]) if repeated else 1)]
        values = [v for v in values if v is not None]
        if not values:
            continue
        try:
            if repeated:
                getattr(msg, field.name).extend(values)
            else:
                setattr(msg, field.name, values[0])
        except (TypeError, ValueError):
            pass


def scalar(field, rng):
    t = field.type
    if t == pbd.FieldDescriptor.TYPE_STRING:
        if HARVESTED and rng.random() < 0.7:
            return rng.choice(sorted(HARVESTED))
        return rng.choice(STRINGS)
    if t == pbd.FieldDescriptor.TYPE_BYTES:
        return bytes(rng.getrandbits(8) for _ in range(rng.choice([0, 3, 64])))
    if t == pbd.FieldDescriptor.TYPE_BOOL:
        return rng.random() < 0.5
    if t == pbd.FieldDescriptor.TYPE_ENUM:
        # A known value, or one the contract does not have.
        known = [v.number for v in field.enum_type.values]
        return rng.choice(known + [99, -5])
    if t in (pbd.FieldDescriptor.TYPE_INT64, pbd.FieldDescriptor.TYPE_SINT64, pbd.FieldDescriptor.TYPE_SFIXED64):
        return rng.choice(INT64S)
    if t in (pbd.FieldDescriptor.TYPE_UINT64, pbd.FieldDescriptor.TYPE_FIXED64):
        return rng.choice([0, 1, 2**64 - 1])
    if t in (pbd.FieldDescriptor.TYPE_UINT32, pbd.FieldDescriptor.TYPE_FIXED32):
        return rng.choice([0, 1, 2**32 - 1])
    if t in (pbd.FieldDescriptor.TYPE_DOUBLE, pbd.FieldDescriptor.TYPE_FLOAT):
        return rng.choice([0.0, -1.0, 1e308, float("nan"), float("inf")])
    return rng.choice(INTS)


def harvest(message):
    """Collects the resource names in an answer."""
    if not hasattr(message, "ListFields"):
        if isinstance(message, str) and "/" in message and len(message) < 200:
            HARVESTED.add(message)
        return
    for field, value in message.ListFields():
        if field.type == pbd.FieldDescriptor.TYPE_MESSAGE and field.message_type.GetOptions().map_entry:
            values = list(value.values())
        else:
            values = value if field.is_repeated else [value]
        for v in values:
            harvest(v)


def main():
    binary = sys.argv[1]
    rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 3
    rng = random.Random(20261204)
    failures, calls = [], 0
    codes = collections.Counter()
    exhausted = collections.Counter()
    with tempfile.TemporaryDirectory() as data_dir:
        proc, address, credentials = start_mesh(binary, data_dir)
        try:
            channel = grpc.insecure_channel(address, options=[("grpc.max_send_message_length", 64 << 20)])
            contracts = Contracts(channel)

            def token(*args):
                out = subprocess.run(
                    [binary, "token", "--data-dir", data_dir, *args],
                    check=True, capture_output=True, text=True,
                )
                return [("authorization", "Bearer " + out.stdout.strip())]

            callers = {
                "no token": [],
                "partner": token("--partner", "jade-plaza"),
                "other partner": token("--partner", "aurora-shoes"),
                "store": token("--partner", "jade-plaza", "--store", "partners/jade-plaza/stores/cosmetics"),
                "operator": token("--operator"),
            }
            # Tokens no one issued: the partner's with its signature altered, and the same
            # claims under "alg": "none". Each is refused like no token at all.
            header, claims, signature = callers["partner"][0][1].removeprefix("Bearer ").split(".")
            flipped = ("A" if signature[0] != "A" else "B") + signature[1:]
            unsigned_header = base64.urlsafe_b64encode(b'{"alg":"none","typ":"JWT"}').rstrip(b"=").decode()
            callers["forged token"] = [("authorization", f"Bearer {header}.{claims}.{flipped}")]
            callers["unsigned token"] = [("authorization", f"Bearer {unsigned_header}.{claims}.")]
            unauthenticated = {"no token", "forged token", "unsigned token"}
            # First pass: empty and garbage requests; the second aims garbage at the resource
            # names the first one's answers held.
            for first in (True, False):
                for path, method, call in methods(channel, contracts):
                    for who, metadata in callers.items():
                        requests = [method.input()] if first else []
                        if who not in unauthenticated:
                            for _ in range(rounds):
                                request = method.input()
                                fill(request, rng, sparse=not first)
                                requests.append(request)
                        for request in requests:
                            calls += 1
                            code, answer = invoke(call, method.streaming, request, metadata)
                            if answer is not None:
                                harvest(answer)
                            codes[str(code).replace("StatusCode.", "")] += 1
                            if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
                                exhausted[path] += 1
                            if isinstance(code, str) or code in BAD:
                                failures.append((path, who, code, request))
                            if who in unauthenticated and path not in OPEN and code != grpc.StatusCode.UNAUTHENTICATED:
                                failures.append((path, who, code, request))
            # The mesh is still up and serving after all of it.
            health = channel.unary_unary("/grpc.health.v1.Health/Check")
            health(b"", timeout=5)
        finally:
            proc.send_signal(signal.SIGTERM)
            code = proc.wait(timeout=30)
        for path, who, status, request in failures[:40]:
            text = str(request).replace("\n", " ")[:300]
            print(f"FAIL {path} as {who}: {status} for {text}")
        print(f"sweep: {calls} calls, {len(failures)} failures, {len(HARVESTED)} names aimed at; lianyu up exited with {code}")
        print("answers:", dict(codes.most_common()))
        print("RESOURCE_EXHAUSTED from:", dict(exhausted))
        for line in proc.errors[:10]:
            print("mesh log:", line[:600])
        assert not failures and code == 0


class Method:
    def __init__(self, desc):
        self.input = message_factory.GetMessageClass(desc.input_type)
        self.output = message_factory.GetMessageClass(desc.output_type)
        self.streaming = desc.server_streaming


def methods(channel, contracts):
    """Every RPC of the mesh's own services: its path, its messages and a callable for it."""
    for service in sorted(contracts.services()):
        if not service.startswith("lianyu."):
            continue
        for desc in contracts.pool.FindServiceByName(service).methods:
            method = Method(desc)
            path = f"{service}/{desc.name}"
            make = channel.unary_stream if method.streaming else channel.unary_unary
            call = make(
                "/" + path,
                request_serializer=method.input.SerializeToString,
                response_deserializer=method.output.FromString,
            )
            yield path, method, call


def invoke(call, streaming, request, metadata):
    """How the call ended, and its (first) answer when it had one."""
    try:
        if streaming:
            stream = call(request, metadata=metadata, timeout=1.5)
            answer = None
            for answer in stream:
                break
            stream.cancel()
            return grpc.StatusCode.OK, answer
        return grpc.StatusCode.OK, call(request, metadata=metadata, timeout=10)
    except grpc.RpcError as e:
        if streaming and e.code() in (grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED):
            return grpc.StatusCode.OK, None
        if "metadata size exceeds" in (e.details() or ""):
            # The client dropped the answer: its trailers were over gRPC C core's limit.
            return "an answer too large for a gRPC C-core client", None
        if e.code() == grpc.StatusCode.INVALID_ARGUMENT and not names_fields(e):
            return "INVALID_ARGUMENT without fields", None
        return e.code(), None


def names_fields(error):
    status = rpc_status.from_call(error)
    if status is None:
        return False
    for detail in status.details:
        bad = error_details_pb2.BadRequest()
        if detail.Is(bad.DESCRIPTOR):
            detail.Unpack(bad)
            return len(bad.field_violations) > 0 and all(v.field for v in bad.field_violations)
    return False


if __name__ == "__main__":
    main()
