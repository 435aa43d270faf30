"""The etcd key layout, in one place.

    {prefix}/resources/{Kind}/{name}   a resource as canonical JSON (secrets included)
    {prefix}/status/{Kind}/{name}      status the control plane writes (rollout progress)
    {prefix}/status/Endpoints/{upstream}/{version}
                                       the addresses the leader's resolver found for the
                                       version's DNS names: a JSON list of {address,
                                       source}, rewritten only when it changes (in the
                                       state range: every replica renders EDS from it)
    {prefix}/status/LeasedEndpoints/{upstream}/{version}
                                       the same for its leased keys (`endpointsFrom`), as
                                       the leader copied them (source etcd:KEY or
                                       registered:PRINCIPAL); its own writer, its own key
    {prefix}/registered/{upstream}/{version}/{address}
                                       an `endpoint register`: {address, principal}, held
                                       by the registration's lease; outside the state range
                                       (the leader copies it into the set above)
    {prefix}/dns/{name}                how resolving a name went: {resolvedAt, error,
                                       failingSince, addresses}; outside the state range
                                       (no re-render), for `get endpoints`
    {prefix}/audit/{seq:020d}          audit entries, hash-chained
    {prefix}/audit-head                {"seq", "hash"} of the last entry
    {prefix}/leader                    the rollout engine's leader, held by a lease
    {prefix}/fence/{lease:x}           empty, under a lease: written by a fenced commit,
                                       so the commit fails once the lease has expired
    {prefix}/fleet/{replica}/{n}.{i}   what the replica's proxies ACKed, held by its lease
                                       (shard i of n, by node id: n grows so that one
                                       value stays under etcd's 1.5 MiB request limit)
    {prefix}/metrics/{replica}         its proxies' request counts per second (analysis), held
                                       by its lease
    {prefix}/health/{replica}          its proxies' endpoint health per cluster, held by its
                                       lease
    {prefix}/vault/ca                  our CA (its key sealed; controlplane.secrets.records)
    {prefix}/vault/certs/{group}       a proxy group's serving certificate (key sealed)
    {prefix}/vault/credentials/{name}  a Credential's current value (sealed); `vault/` sorts
                                       after `status0`, outside the state watch's range
"""

from __future__ import annotations

from dataclasses import dataclass

DISCOVERED_KIND = "Endpoints"
"""The status kind of discovered addresses: `status/Endpoints/{upstream}/{version}`."""
LEASED_KIND = "LeasedEndpoints"
"""The status kind of the addresses copied from leased keys."""


@dataclass(frozen=True)
class Keys:
    prefix: str = "/controlplane"

    @property
    def resources(self) -> bytes:
        return f"{self.prefix}/resources/".encode()

    def resource(self, kind: str, name: str) -> bytes:
        return f"{self.prefix}/resources/{kind}/{name}".encode()

    def kind_prefix(self, kind: str) -> bytes:
        return f"{self.prefix}/resources/{kind}/".encode()

    @property
    def statuses(self) -> bytes:
        return f"{self.prefix}/status/".encode()

    @property
    def state_range(self) -> tuple[bytes, bytes]:
        """[resources/, status/ + 1): specs and statuses, read or watched together."""
        return self.resources, f"{self.prefix}/status0".encode()

    def status(self, kind: str, name: str) -> bytes:
        return f"{self.prefix}/status/{kind}/{name}".encode()

    @property
    def audit(self) -> bytes:
        return f"{self.prefix}/audit/".encode()

    def audit_entry(self, seq: int) -> bytes:
        return f"{self.prefix}/audit/{seq:020d}".encode()

    @property
    def audit_head(self) -> bytes:
        return f"{self.prefix}/audit-head".encode()

    @property
    def fleet(self) -> bytes:
        return f"{self.prefix}/fleet/".encode()

    def fleet_shard(self, identity: str, shards: int, shard: int) -> bytes:
        """Shard `shard` of `shards` of a replica's report."""
        return f"{self.prefix}/fleet/{identity}/{shards}.{shard:04d}".encode()

    @property
    def request_counts(self) -> bytes:
        """Every replica's analysis counts (the path keeps its first name, `metrics/`, so
        replicas of different versions read each other's reports)."""
        return f"{self.prefix}/metrics/".encode()

    def request_counts_member(self, identity: str) -> bytes:
        return f"{self.prefix}/metrics/{identity}".encode()

    @property
    def health(self) -> bytes:
        return f"{self.prefix}/health/".encode()

    def health_member(self, identity: str) -> bytes:
        return f"{self.prefix}/health/{identity}".encode()

    def fence(self, lease: int) -> bytes:
        return f"{self.prefix}/fence/{lease:x}".encode()

    @property
    def leader(self) -> bytes:
        return f"{self.prefix}/leader".encode()

    @property
    def secrets(self) -> bytes:
        """The vault's records (controlplane.secrets.vault), watched on their own."""
        return f"{self.prefix}/vault/".encode()

    @property
    def secret_ca(self) -> bytes:
        return f"{self.prefix}/vault/ca".encode()

    def secret_certificate(self, group: str) -> bytes:
        return f"{self.prefix}/vault/certs/{group}".encode()

    def secret_credential(self, name: str) -> bytes:
        return f"{self.prefix}/vault/credentials/{name}".encode()

    def discovered(self, upstream: str, version: str) -> bytes:
        return f"{self.prefix}/status/{DISCOVERED_KIND}/{upstream}/{version}".encode()

    @property
    def discovered_prefix(self) -> bytes:
        return f"{self.prefix}/status/{DISCOVERED_KIND}/".encode()

    def leased(self, upstream: str, version: str) -> bytes:
        return f"{self.prefix}/status/{LEASED_KIND}/{upstream}/{version}".encode()

    @property
    def registered(self) -> bytes:
        return f"{self.prefix}/registered/".encode()

    def registration(self, upstream: str, version: str, address: str) -> bytes:
        return f"{self.prefix}/registered/{upstream}/{version}/{address}".encode()

    def parse_registration(self, key: bytes) -> tuple[str, str, str]:
        """`…/registered/payments/v2/10.0.0.7:80` → ("payments", "v2", "10.0.0.7:80")."""
        upstream, _, rest = key.decode()[len(self.registered):].partition("/")
        version, _, address = rest.partition("/")
        return upstream, version, address

    @property
    def dns(self) -> bytes:
        return f"{self.prefix}/dns/".encode()

    def dns_name(self, name: str) -> bytes:
        return f"{self.prefix}/dns/{name}".encode()

    def parse_status(self, key: bytes) -> tuple[str, str]:
        """`…/status/Rollout/payments-v2` → ("Rollout", "payments-v2")."""
        kind, _, name = key.decode()[len(self.statuses):].partition("/")
        return kind, name

    def parse_resource(self, key: bytes) -> tuple[str, str]:
        """`…/resources/Upstream/payments` → ("Upstream", "payments")."""
        kind, _, name = key.decode()[len(self.resources):].partition("/")
        return kind, name
