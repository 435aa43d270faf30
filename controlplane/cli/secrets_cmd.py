"""`controlplane cert rotate [--group G | --ca]`, `cert issue`, `cert revoke --serial S` and
`controlplane credential rotate NAME`.

Neither prints key material or credential values: only serials and generations.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from controlplane.api import admin_pb2
from controlplane.cli.client import Connection
from controlplane.errors import FieldError, InvalidInputError

_CERT_EPILOG = """Issues new serving certificates now (they also rotate by themselves at about
half their lifetime). New TLS handshakes get the new certificate within moments; open
connections keep theirs.

--ca rotates the CA itself: a new CA issues every group's certificate, and the
previous CA stays in every trust bundle (mTLS listeners, mTLS upstreams) until every
connected proxy has ACKed the new certificates; then it is dropped. Each step is in
the audit log (ca/rotate, cert/rotate, ca/retire).

examples:
  controlplane cert rotate
  controlplane cert rotate --group edge
  controlplane cert rotate --ca
"""

_CREDENTIAL_EPILOG = """Switches every proxy injecting the credential to a new value at once, and
prints the generation Envoy is sent now. Without --from-file the control plane re-reads
the Credential's valueFrom file (write the new value there first). A rotation that would
send the same value again is refused (exit 2), and nothing is written.

--emergency also revokes the generation the new value replaces: audited as
credential/revoke, and that value is refused from then on. Without it the previous
generation is no longer sent but stays valid at the upstream until revoked there.

examples:
  controlplane credential rotate payments-key-2026 --from-file /run/secrets/payments-2026.new
  controlplane credential rotate payments-key-2026 --emergency
"""


def add_parser(sub: Any, client: argparse.ArgumentParser) -> None:
    """Register `cert rotate` and `credential rotate` on `sub`."""
    p = sub.add_parser("cert", help="serving certificates issued by the built-in CA")
    verbs = p.add_subparsers(dest="cert_command", required=True, parser_class=type(p))
    c = verbs.add_parser("rotate", parents=[client], help="issue new certificates now",
                         epilog=_CERT_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    c.add_argument("--group", default="", help="only this proxy group (default: every TLS group)")
    c.add_argument("--ca", action="store_true",
                   help="rotate the CA too (the old one stays trusted until the fleet ACKed)")
    c.set_defaults(handler=cert_rotate)
    c = verbs.add_parser(
        "issue", parents=[client],
        help="a client certificate for a proxy's xDS connection, or for an admin API user",
        epilog="examples:\n  controlplane cert issue --group edge --out /etc/envoy/tls && "
               "controlplane bootstrap --node-id edge-1 --group edge --tls-dir /etc/envoy/tls"
               "\n  controlplane cert issue --group edge --node-id edge-1 --out /etc/envoy/tls"
               "\n  controlplane cert issue --user alice --role operator --out ~/.controlplane"
               " && controlplane get rollouts --tls-dir ~/.controlplane",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    who = c.add_mutually_exclusive_group(required=True)
    who.add_argument("--group", help="the proxy group the certificate names")
    who.add_argument("--user", help="an admin API user (with --role): writes client.crt/.key")
    c.add_argument("--node-id", help="with --group: for this one proxy (its node id); a "
                   "stream claiming another node id is refused, and no other certificate "
                   "can take over this one's")
    c.add_argument("--role", choices=["viewer", "operator", "admin"], default="viewer",
                   help="the user's role, signed into the certificate (default: viewer)")
    c.add_argument("--out", required=True,
                   help="directory for ca.crt and proxy.crt/.key (or client.crt/.key)")
    c.set_defaults(handler=cert_issue)
    c = verbs.add_parser(
        "revoke", parents=[client],
        help="end a client certificate (a proxy's or a user's) before it expires",
        epilog="The serial is what `cert issue` printed (the audit log's cert/issue entries\n"
               "record it too). From then on the certificate gets no connection; open xDS\n"
               "streams with it end at once on this server, within 2 s on the others.\n\n"
               "example:\n  controlplane cert revoke --serial 3f2a9c... --reason 'laptop lost'",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    c.add_argument("--serial", required=True, help="the certificate's serial (hexadecimal)")
    c.add_argument("--reason", default="", help="recorded in the audit log")
    c.set_defaults(handler=cert_revoke)

    p = sub.add_parser("credential", help="upstream credentials injected by the proxies")
    verbs = p.add_subparsers(dest="credential_command", required=True, parser_class=type(p))
    c = verbs.add_parser("rotate", parents=[client], help="switch a credential to a new value",
                         epilog=_CREDENTIAL_EPILOG,
                         formatter_class=argparse.RawDescriptionHelpFormatter)
    c.add_argument("name")
    c.add_argument("--from-file", help="file holding the new value (read here, sent once)")
    c.add_argument("--emergency", action="store_true",
                   help="revoke the generation the new value replaces (never sent again)")
    c.add_argument("-o", "--output", choices=["json"],
                   help="json: name, generation, previousGeneration, previousRevoked")
    c.set_defaults(handler=credential_rotate)


def _conn(args: argparse.Namespace) -> Connection:
    return Connection.from_args(args.server, args.token, args.client_tls_dir)


def cert_rotate(args: argparse.Namespace) -> int:
    conn = _conn(args)
    response = conn.stub().RotateCertificates(
        admin_pb2.RotateCertificatesRequest(group=args.group, ca=args.ca),
        metadata=conn.metadata(), timeout=conn.timeout,
    )
    if args.ca:
        print(f"ca rotated: serial {response.previous_ca_serial or '(none)'} -> "
              f"{response.ca_serial}: the new CA is trusted beside the old one, issues the "
              "certificates once every connected proxy has ACKed both, and the old one is "
              "retired once they have ACKed those (`controlplane audit`: ca/promote, "
              "ca/retire)")
    for cert in response.certificates:
        print(f"certificate/{cert.group} rotated: serial {cert.old_serial or '(none)'} -> "
              f"{cert.new_serial}")
    return 0


def cert_issue(args: argparse.Namespace) -> int:
    conn = _conn(args)
    request = (admin_pb2.IssueProxyCertificateRequest(user=args.user, role=args.role)
               if args.user else admin_pb2.IssueProxyCertificateRequest(
                   group=args.group, node_id=args.node_id or ""))
    response = conn.stub().IssueProxyCertificate(request, metadata=conn.metadata(),
                                                 timeout=conn.timeout)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "ca.crt").write_text(response.ca_pem)
    name = "client" if args.user else "proxy"
    (out / f"{name}.crt").write_text(response.cert_pem)
    key = out / f"{name}.key"
    key.touch(mode=0o600)
    key.chmod(0o600)
    key.write_text(response.key_pem)
    holder = (f"user {args.user} ({args.role})" if args.user else
              f"node {args.node_id} of group {args.group}" if args.node_id
              else f"group {args.group}")
    print(f"certificate for {holder} (serial {response.serial}) written to "
          f"{out}/{name}.crt, its key to {key}, the CA to {out}/ca.crt")
    return 0


def cert_revoke(args: argparse.Namespace) -> int:
    conn = _conn(args)
    response = conn.stub().RevokeCertificate(
        admin_pb2.RevokeCertificateRequest(serial=args.serial, reason=args.reason),
        metadata=conn.metadata(), timeout=conn.timeout)
    state = "was already revoked" if response.already else "revoked"
    print(f"certificate serial {response.serial} {state}")
    return 0


def _read_value(path: str) -> str:
    try:
        value = Path(path).read_text().rstrip("\r\n")
    except OSError as exc:
        raise InvalidInputError([FieldError("--from-file", f"cannot read {path}: "
                                                           f"{exc.strerror}")]) from None
    if not value:
        raise InvalidInputError([FieldError("--from-file", f"{path} is empty")])
    return value


def credential_rotate(args: argparse.Namespace) -> int:
    value = _read_value(args.from_file) if args.from_file else ""
    conn = _conn(args)
    response = conn.stub().RotateCredential(
        admin_pb2.RotateCredentialRequest(name=args.name, value=value,
                                          emergency=args.emergency),
        metadata=conn.metadata(), timeout=conn.timeout,
    )
    if args.output == "json":
        print(json.dumps({"name": response.name, "generation": response.generation,
                          "previousGeneration": response.previous_generation,
                          "previousRevoked": response.previous_revoked}))
        return 0
    print(rotation_summary(response))
    return 0


def rotation_summary(response: admin_pb2.RotateCredentialResponse) -> str:
    """One line: the generation Envoy is sent now and what became of the one before."""
    head = (f"credential {response.name} rotated: generation {response.generation} "
            "is now sent by Envoy")
    previous = response.previous_generation
    if not previous:
        return f"{head} (its first value)"
    if response.previous_revoked:
        return (f"{head} (generation {previous} revoked: the control plane never sends it "
                "again; revoke it at the upstream too)")
    return (f"{head} (generation {previous} no longer sent, not revoked: it stays valid at "
            "the upstream until revoked there)")
