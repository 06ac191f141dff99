"""A partner's integration engineer meets the mesh from Python, with no generated code:
reflection to discover the contracts, the client-credentials exchange, a call with the token
and a W3C traceparent, and rich error details on bad input.

Usage: partner_client.py PATH/TO/lianyu
It starts `lianyu up` on a fresh data directory (the demo creates two partners and prints
their credentials) and stops it with SIGTERM at the end.
"""

import re
import signal
import subprocess
import sys
import tempfile
import threading

import grpc
from google.protobuf import descriptor_pool, message_factory
from google.rpc import error_details_pb2
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)
from grpc_status import rpc_status


def start_mesh(binary, data_dir):
    proc = subprocess.Popen(
        [binary, "up", "--listen", "127.0.0.1:0", "--data-dir", data_dir],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    address, credentials = None, {}
    for line in proc.stdout:
        if address is None:
            match = re.match(r"lianyu mesh listening on (\S+)", line)
            assert match, f"banner: {line!r}"
            address = match.group(1)
        match = re.match(r"\s+(\S+)\s+client_id (\S+)\s+client_secret (\S+)", line)
        if match:
            credentials[match.group(1)] = (match.group(2), match.group(3))
        if "a partner's token:" in line:
            break
    assert len(credentials) == 2, f"demo credentials: {credentials}"
    # The mesh logs to stdout: keep reading it, or a full pipe would stall the mesh, and keep
    # its error lines for a failing test to show.
    proc.errors = []

    def drain():
        for line in proc.stdout:
            if '"level":"ERROR"' in line:
                proc.errors.append(line.strip())

    threading.Thread(target=drain, daemon=True).start()
    return proc, address, credentials


class Contracts:
    """Message classes and method paths, read from the server by reflection (the way grpcio's
    own reflection client is meant to be used: a descriptor pool backed by the server)."""

    def __init__(self, channel):
        self.db = ProtoReflectionDescriptorDatabase(channel)
        self.pool = descriptor_pool.DescriptorPool(self.db)

    def services(self):
        return list(self.db.get_services())

    def method(self, channel, service, name):
        desc = self.pool.FindServiceByName(service).FindMethodByName(name)
        request = message_factory.GetMessageClass(desc.input_type)
        response = message_factory.GetMessageClass(desc.output_type)
        call = channel.unary_unary(
            f"/{service}/{name}",
            request_serializer=request.SerializeToString,
            response_deserializer=response.FromString,
        )
        return request, call


def main():
    binary = sys.argv[1]
    with tempfile.TemporaryDirectory() as data_dir:
        proc, address, credentials = start_mesh(binary, data_dir)
        try:
            channel = grpc.insecure_channel(address)
            contracts = Contracts(channel)
            services = contracts.services()
            for expected in ("lianyu.identity.v1.AuthService", "lianyu.identity.v1.MemberService", "grpc.health.v1.Health"):
                assert expected in services, services

            # The client-credentials exchange needs no token.
            client_id, secret = credentials["jade-plaza"]
            IssueToken, issue = contracts.method(channel, "lianyu.identity.v1.AuthService", "IssueToken")
            issued = issue(IssueToken(client_id=client_id, client_secret=secret))
            assert issued.token_type == "Bearer" and issued.access_token.count(".") == 2
            auth = [
                ("authorization", f"Bearer {issued.access_token}"),
                ("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
            ]

            ListPartners, list_partners = contracts.method(channel, "lianyu.identity.v1.PartnerService", "ListPartners")
            try:
                list_partners(ListPartners())
                raise AssertionError("a call without a token was served")
            except grpc.RpcError as e:
                assert e.code() == grpc.StatusCode.UNAUTHENTICATED, e.code()
            partners = list_partners(ListPartners(), metadata=auth).partners
            names = sorted(p.name for p in partners)
            assert names == ["partners/aurora-shoes", "partners/jade-plaza"], names

            # Bad input: INVALID_ARGUMENT with ErrorInfo and the field at fault.
            GetMember, get_member = contracts.method(channel, "lianyu.identity.v1.MemberService", "GetMember")
            try:
                get_member(GetMember(name="not-a-member"), metadata=auth)
                raise AssertionError("a malformed name was accepted")
            except grpc.RpcError as e:
                assert e.code() == grpc.StatusCode.INVALID_ARGUMENT, e.code()
                status = rpc_status.from_call(e)
                info, bad = error_details_pb2.ErrorInfo(), error_details_pb2.BadRequest()
                for detail in status.details:
                    if detail.Is(info.DESCRIPTOR):
                        detail.Unpack(info)
                    if detail.Is(bad.DESCRIPTOR):
                        detail.Unpack(bad)
                assert (info.reason, info.domain) == ("INVALID_ARGUMENT", "lianyu.identity"), info
                assert [v.field for v in bad.field_violations] == ["name"], bad
            # The demo's coupon, as its issuer and its funder read it: one etag of its terms,
            # the version a funder passes to AcceptBenefitFunding.
            ListBenefits, list_benefits = contracts.method(channel, "lianyu.entitlements.v1.BenefitService", "ListBenefits")
            GetBenefit, get_benefit = contracts.method(channel, "lianyu.entitlements.v1.BenefitService", "GetBenefit")
            coupons = list_benefits(ListBenefits(), metadata=auth).benefits
            assert len(coupons) == 1, coupons
            etag = coupons[0].etag
            assert len(etag) == 24 and all(c in "0123456789abcdef" for c in etag), etag
            brand_id, brand_secret = credentials["aurora-shoes"]
            brand_token = issue(IssueToken(client_id=brand_id, client_secret=brand_secret)).access_token
            as_funder = get_benefit(GetBenefit(name=coupons[0].name), metadata=[("authorization", f"Bearer {brand_token}")])
            assert (as_funder.etag, as_funder.funding_accepted) == (etag, True), as_funder
            print("python partner client: reflection, IssueToken, ListPartners, rich errors, etags: ok")
        finally:
            proc.send_signal(signal.SIGTERM)
            code = proc.wait(timeout=20)
        assert code == 0, f"lianyu up exited with {code}"


if __name__ == "__main__":
    main()
