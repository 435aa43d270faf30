"""Secrets over SDS: listener TLS (group certificate, CA for mTLS), upstream mTLS (the
group certificate as a client certificate, the CA to verify the upstream) and upstream
credentials.

translate stays pure: key material arrives as `SecretMaterial`, built by the caller
from the vault. Names are stable (`cert-<group>`, `controlplane-ca`,
`credential-<name>`), so a rotation changes only the Secret resource: listeners and
clusters stay byte-identical, Envoy swaps the certificate for new handshakes (open
connections keep theirs) and the injected header for new requests.

A group gets only the secrets its own listeners and routed-to clusters name.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from envoy.config.core.v3.base_pb2 import DataSource, TransportSocket
from envoy.config.core.v3.extension_pb2 import TypedExtensionConfig
from envoy.config.core.v3.protocol_pb2 import Http1ProtocolOptions
from envoy.extensions.filters.http.credential_injector.v3.credential_injector_pb2 import (
    CredentialInjector,
)
from envoy.extensions.filters.http.upstream_codec.v3.upstream_codec_pb2 import UpstreamCodec
from envoy.extensions.filters.network.http_connection_manager.v3.http_connection_manager_pb2 import (  # noqa: E501
    HttpFilter,
)
from envoy.extensions.http.injected_credentials.generic.v3.generic_pb2 import Generic
from envoy.extensions.transport_sockets.tls.v3.common_pb2 import (
    CertificateValidationContext,
    SubjectAltNameMatcher,
    TlsCertificate,
)
from envoy.extensions.transport_sockets.tls.v3.secret_pb2 import (
    GenericSecret,
    SdsSecretConfig,
    Secret,
)
from envoy.extensions.transport_sockets.tls.v3.tls_pb2 import (
    CommonTlsContext,
    DownstreamTlsContext,
    UpstreamTlsContext,
)
from envoy.extensions.upstreams.http.v3.http_protocol_options_pb2 import HttpProtocolOptions
from envoy.type.matcher.v3.string_pb2 import StringMatcher
from google.protobuf.wrappers_pb2 import BoolValue
from pydantic import SecretBytes, SecretStr

from controlplane.model import Credential, DesiredState
from controlplane.model.resources import ListenerTLS, UpstreamTLS
from controlplane.spiffe import NODE_PART, group_id
from controlplane.translate.common import ads, pack

CA_SECRET = "controlplane-ca"
TLS_TRANSPORT_SOCKET = "envoy.transport_sockets.tls"
CREDENTIAL_INJECTOR_FILTER = "envoy.filters.http.credential_injector"
GENERIC_CREDENTIAL = "envoy.http.injected_credentials.generic"
UPSTREAM_CODEC_FILTER = "envoy.filters.http.upstream_codec"
HTTP_PROTOCOL_OPTIONS = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
ALPN = ("h2", "http/1.1")


def certificate_secret_name(group: str) -> str:
    """The SDS name of a group's serving certificate."""
    return f"cert-{group}"


def credential_secret_name(credential: str) -> str:
    """The SDS name of a Credential's value (a generic secret)."""
    return f"credential-{credential}"


@dataclass(frozen=True)
class GroupCertificate:
    cert_pem: str
    key_pem: SecretBytes


@dataclass(frozen=True)
class SecretMaterial:
    """Key material translate may put into Secrets; reprs never show it."""

    ca_pem: str = ""
    certificates: Mapping[str, GroupCertificate] = field(
        default_factory=lambda: MappingProxyType({}))
    credentials: Mapping[str, SecretStr] = field(default_factory=lambda: MappingProxyType({}))


NO_MATERIAL = SecretMaterial()


def placeholder_material(state: DesiredState) -> SecretMaterial:
    """Stand-in material for every secret `state` can name (for `apply --dry-run` diffs,
    which render secrets redacted anyway)."""
    placeholder = GroupCertificate("[redacted]", SecretBytes(b"[redacted]"))
    return SecretMaterial(
        ca_pem="[redacted]",
        certificates=MappingProxyType({g: placeholder for g in state.groups()}),
        credentials=MappingProxyType({n: SecretStr("[redacted]") for n in state.credentials}),
    )


def sds(name: str) -> SdsSecretConfig:
    return SdsSecretConfig(name=name, sds_config=ads())


def downstream_tls(group: str, tls: ListenerTLS) -> TransportSocket:
    """The listener's TLS: the group certificate over SDS; with mtls, client certificates
    must chain to our CA (validation context over SDS too) and, with `allowedGroups` or
    `allowedSubjectAltNames`, name one of them."""
    context = DownstreamTlsContext(common_tls_context=CommonTlsContext(
        tls_certificate_sds_secret_configs=[sds(certificate_secret_name(group))],
        alpn_protocols=list(ALPN),
    ))
    if tls.mtls:
        common = context.common_tls_context
        matchers = allowed_peer_matchers(tls.allowed_groups, tls.allowed_subject_alt_names)
        if matchers:
            # Names inline, CA over SDS: Envoy merges the two.
            combined = common.combined_validation_context
            combined.default_validation_context.match_typed_subject_alt_names.extend(matchers)
            combined.validation_context_sds_secret_config.CopyFrom(sds(CA_SECRET))
        else:
            common.validation_context_sds_secret_config.CopyFrom(sds(CA_SECRET))
        context.require_client_certificate.CopyFrom(BoolValue(value=True))
    return TransportSocket(name=TLS_TRANSPORT_SOCKET, typed_config=pack(context))


def allowed_peer_matchers(groups: Iterable[str], names: Iterable[str]
                          ) -> list[SubjectAltNameMatcher]:
    """A peer certificate passes if it matches any of these: a group's SPIFFE ID exactly,
    or one of its nodes' (`.../group/<g>/node/<id>`; the prefix ends in `/node/`, so group
    `g` never admits group `g2`), or one of `names` exactly (a URI if it has a scheme,
    else a DNS name)."""
    matchers: list[SubjectAltNameMatcher] = []
    for group in groups:
        matchers += [
            SubjectAltNameMatcher(san_type=SubjectAltNameMatcher.URI,
                                  matcher=StringMatcher(exact=group_id(group))),
            SubjectAltNameMatcher(san_type=SubjectAltNameMatcher.URI,
                                  matcher=StringMatcher(prefix=group_id(group) + NODE_PART)),
        ]
    matchers += [
        SubjectAltNameMatcher(
            san_type=SubjectAltNameMatcher.URI if "://" in name else SubjectAltNameMatcher.DNS,
            matcher=StringMatcher(exact=name))
        for name in names
    ]
    return matchers


def upstream_tls(group: str, tls: UpstreamTLS) -> TransportSocket:
    """A version cluster's TLS: the group certificate as the client certificate (over
    SDS, so CDS carries no key material), the upstream verified against our CA (over
    SDS: a CA rotation's trust bundle reaches it too) or the proxy-local `caFile`; with
    `subjectAltNames`, its certificate must also name one of them."""
    common = CommonTlsContext()
    if tls.client_certificate == "auto":
        common.tls_certificate_sds_secret_configs.append(sds(certificate_secret_name(group)))
    names = CertificateValidationContext(match_typed_subject_alt_names=[
        SubjectAltNameMatcher(
            san_type=SubjectAltNameMatcher.URI if "://" in name else SubjectAltNameMatcher.DNS,
            matcher=StringMatcher(exact=name))
        for name in tls.subject_alt_names
    ])
    if tls.ca_file is not None:
        names.trusted_ca.CopyFrom(DataSource(filename=tls.ca_file))
        common.validation_context.CopyFrom(names)
    elif tls.subject_alt_names:
        # Names inline, CA over SDS: Envoy merges the two.
        combined = common.combined_validation_context
        combined.default_validation_context.CopyFrom(names)
        combined.validation_context_sds_secret_config.CopyFrom(sds(CA_SECRET))
    else:
        common.validation_context_sds_secret_config.CopyFrom(sds(CA_SECRET))
    context = UpstreamTlsContext(common_tls_context=common, sni=tls.sni or "")
    return TransportSocket(name=TLS_TRANSPORT_SOCKET, typed_config=pack(context))


def credential_protocol_options(credential: Credential) -> HttpProtocolOptions:
    """Upstream HTTP filters that set the credential's header on every request to the
    cluster (overwriting a client's), then the codec, which must be last."""
    injector = CredentialInjector(
        overwrite=True,
        credential=TypedExtensionConfig(name=GENERIC_CREDENTIAL, typed_config=pack(Generic(
            credential=sds(credential_secret_name(credential.name)),
            header=credential.spec.header,
        ))),
    )
    return HttpProtocolOptions(
        explicit_http_config=HttpProtocolOptions.ExplicitHttpConfig(
            http_protocol_options=Http1ProtocolOptions()),
        http_filters=[
            HttpFilter(name=CREDENTIAL_INJECTOR_FILTER, typed_config=pack(injector)),
            HttpFilter(name=UPSTREAM_CODEC_FILTER, typed_config=pack(UpstreamCodec())),
        ],
    )


def build_secrets(
    group: str,
    *,
    tls: Iterable[ListenerTLS],
    credentials: Iterable[str],
    material: SecretMaterial,
    problems: list[str],
    upstream_tls: Iterable[UpstreamTLS] = (),
) -> list[Secret]:
    """The Secrets the group's listeners (`tls`) and clusters (`credentials`,
    `upstream_tls`) name; a missing one is appended to `problems`."""
    secrets: list[Secret] = []
    tls = list(tls)
    upstream_tls = list(upstream_tls)
    if tls or any(u.client_certificate == "auto" for u in upstream_tls):
        cert = material.certificates.get(group)
        if cert is None:
            problems.append(f"group {group!r} has TLS listeners or mTLS upstreams but no "
                            "certificate was issued for it yet")
        else:
            secrets.append(Secret(
                name=certificate_secret_name(group),
                tls_certificate=TlsCertificate(
                    certificate_chain=DataSource(inline_string=cert.cert_pem),
                    private_key=DataSource(inline_bytes=cert.key_pem.get_secret_value()),
                ),
            ))
    if any(t.mtls for t in tls) or any(u.ca_file is None for u in upstream_tls):
        if not material.ca_pem:
            problems.append(f"group {group!r} verifies certificates against our CA but "
                            "there is no CA yet")
        else:
            secrets.append(Secret(name=CA_SECRET, validation_context=CertificateValidationContext(
                trusted_ca=DataSource(inline_string=material.ca_pem))))
    for name in sorted(set(credentials)):
        value = material.credentials.get(name)
        if value is None:
            problems.append(f"Credential/{name} has no value yet (its file could not be read?)")
            continue
        secrets.append(Secret(name=credential_secret_name(name), generic_secret=GenericSecret(
            secret=DataSource(inline_string=value.get_secret_value()))))
    return secrets


def tls_problems(tls: Iterable[tuple[str, ListenerTLS]]) -> list[str]:
    return [f"Listener/{name}: spec.tls.certificate {t.certificate!r}: only 'auto' is supported"
            for name, t in tls if t.certificate != "auto"]
