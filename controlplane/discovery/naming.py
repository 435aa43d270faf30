"""What a leased key holds, read and written: etcd's naming format, and registrations.

etcd's naming package (`go.etcd.io/etcd/client/v3/naming/endpoints`, behind grpc-go's
etcd resolver) and `etcdctl put --lease` users write, under a prefix of their own:

    services/payments/v2/10.0.0.7:8080 → {"Op":0,"Addr":"10.0.0.7:8080","Metadata":...}

`Op` 0 is "add" (the only operation the package stores); `Metadata` is free and ignored.
`controlplane endpoint register` writes `{"address": ..., "principal": ...}` under our
own prefix (`Keys.registration`). Both must name an IP: a leased key is an instance
announcing itself, and EDS carries addresses (a name belongs in `endpoints`, which the
control plane resolves).
"""

from __future__ import annotations

import json

from controlplane.model.endpoints import REGISTERED, Discovered, parse_endpoint


def ip_endpoint(text: str) -> str:
    """`IP:PORT` by the model's endpoint rules, as EDS writes it.

    Errors:
        ValueError: not HOST:PORT, or HOST is a DNS name (why, in the message).
    """
    hp = parse_endpoint(text)
    if hp.is_name:
        raise ValueError(f"{text!r}: a leased endpoint is IP:PORT, not a name (list names "
                         "in `endpoints`: the control plane resolves those)")
    return hp.address()


def naming_address(raw: bytes) -> str:
    """The address of one value in etcd's naming format.

    Errors:
        ValueError: not that format, or its Addr is not IP:PORT (why, in the message).
    """
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise ValueError('not JSON; etcd\'s naming format is {"Op":0,"Addr":"IP:PORT"}'
                         ) from None
    if not isinstance(data, dict) or not isinstance(data.get("Addr"), str):
        raise ValueError('not {"Op":0,"Addr":"IP:PORT",...} (etcd\'s naming format)')
    op = data.get("Op", 0)
    if op != 0 or isinstance(op, bool):
        raise ValueError(f"Op {op!r}: a stored endpoint is Op 0 (add)")
    return ip_endpoint(data["Addr"])


def registration_value(address: str, principal: str) -> bytes:
    return json.dumps({"address": address, "principal": principal},
                      separators=(",", ":")).encode()


def registration_from(raw: bytes) -> Discovered:
    """A registration's address and its source, `registered:PRINCIPAL`.

    Errors:
        ValueError: not what `registration_value` writes.
    """
    data = json.loads(raw)
    if not (isinstance(data, dict) and isinstance(data.get("address"), str)
            and isinstance(data.get("principal"), str)):
        raise ValueError("not {address, principal}")
    return Discovered(ip_endpoint(data["address"]), REGISTERED + data["principal"])
