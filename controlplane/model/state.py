"""The whole desired state, and the rules that span resources."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TypeVar

from controlplane.errors import FieldError, InvalidInputError
from controlplane.model.endpoints import Discovered, DiscoveredMap
from controlplane.model.envoy_rules import control_problem, envoy_problems
from controlplane.model.resources import (
    Credential,
    Listener,
    Match,
    ProxyGroup,
    Resource,
    Rollout,
    Route,
    Upstream,
)
from controlplane.model.status import RolloutStatus

_R = TypeVar("_R", bound=Resource)


def _frozen(items: Iterable[_R]) -> Mapping[str, _R]:
    return MappingProxyType({r.name: r for r in sorted(items, key=lambda r: r.name)})


@dataclass(frozen=True)
class DesiredState:
    """Every resource the user declared, by kind then name (sorted, read-only)."""

    listeners: Mapping[str, Listener] = field(default_factory=lambda: _frozen([]))
    routes: Mapping[str, Route] = field(default_factory=lambda: _frozen([]))
    upstreams: Mapping[str, Upstream] = field(default_factory=lambda: _frozen([]))
    credentials: Mapping[str, Credential] = field(default_factory=lambda: _frozen([]))
    rollouts: Mapping[str, Rollout] = field(default_factory=lambda: _frozen([]))
    proxy_groups: Mapping[str, ProxyGroup] = field(default_factory=lambda: _frozen([]))
    statuses: Mapping[str, RolloutStatus] = field(
        default_factory=lambda: MappingProxyType({})
    )
    """Rollout name → the status the control plane wrote for it."""
    discovered: DiscoveredMap = field(default_factory=lambda: MappingProxyType({}))
    """(upstream, version) → the addresses the resolver stored for its names."""
    fingerprint: str = field(default="", compare=False)
    """A digest of the stored bytes this state was read from ("" for a state built in
    memory): equal fingerprints, equal states. What renders are memoized on."""

    @classmethod
    def of(
        cls, resources: Iterable[Resource], statuses: Mapping[str, RolloutStatus] | None = None,
        *, fingerprint: str = "", discovered: DiscoveredMap | None = None,
    ) -> DesiredState:
        """Build a state from resources of any kind (a later duplicate wins)."""
        by_kind: dict[str, dict[str, Resource]] = {}
        for resource in resources:
            by_kind.setdefault(resource.kind, {})[resource.name] = resource
        def pick(kind: str, typ: type[_R]) -> Mapping[str, _R]:
            return _frozen(r for r in by_kind.get(kind, {}).values() if isinstance(r, typ))
        return cls(
            listeners=pick("Listener", Listener),
            routes=pick("Route", Route),
            upstreams=pick("Upstream", Upstream),
            credentials=pick("Credential", Credential),
            rollouts=pick("Rollout", Rollout),
            proxy_groups=pick("ProxyGroup", ProxyGroup),
            statuses=MappingProxyType(dict(sorted((statuses or {}).items()))),
            discovered=MappingProxyType(dict(sorted((discovered or {}).items()))),
            fingerprint=fingerprint,
        )

    def resources(self) -> list[Resource]:
        """Every resource, in apply order (dependencies first), sorted by name within a kind."""
        out: list[Resource] = []
        for mapping in (
            self.proxy_groups, self.credentials, self.upstreams,
            self.listeners, self.routes, self.rollouts,
        ):
            out.extend(mapping.values())
        return out

    def get(self, kind: str, name: str) -> Resource | None:
        return self._by_kind(kind).get(name)

    def _by_kind(self, kind: str) -> Mapping[str, Resource]:
        tables: dict[str, Mapping[str, Resource]] = {
            "Listener": self.listeners, "Route": self.routes, "Upstream": self.upstreams,
            "Credential": self.credentials, "Rollout": self.rollouts,
            "ProxyGroup": self.proxy_groups,
        }
        return tables[kind]

    def with_applied(self, resources: Iterable[Resource]) -> DesiredState:
        """The state after creating or replacing `resources`."""
        return DesiredState.of([*self.resources(), *resources], self.statuses,
                               discovered=self.discovered)

    def without(self, kind: str, name: str) -> DesiredState:
        """The state after deleting one resource."""
        return DesiredState.of(
            (r for r in self.resources() if (r.kind, r.name) != (kind, name)), self.statuses,
            discovered=self.discovered,
        )

    def with_status(self, name: str, status: RolloutStatus) -> DesiredState:
        """The state with one rollout's status replaced."""
        return DesiredState.of(self.resources(), {**self.statuses, name: status},
                               discovered=self.discovered)

    def status(self, rollout: str) -> RolloutStatus:
        """A rollout's status; Pending if the control plane has not written one yet."""
        return self.statuses.get(rollout) or RolloutStatus()

    def addresses(self, upstream: str, version: str) -> list[Discovered]:
        """What the version's endpoints stand for now: its IPs, its names' and its leased
        keys' stored addresses (`VersionSpec.addresses`). A missing version has none."""
        ups = self.upstreams.get(upstream)
        if ups is None or version not in ups.spec.versions:
            return []
        return ups.spec.versions[version].addresses(self.discovered.get((upstream, version), ()))

    def groups(self) -> list[str]:
        """Proxy groups the state configures (declared or named by a listener), sorted."""
        return sorted({*self.proxy_groups, *(lst.spec.group for lst in self.listeners.values())})

    def problems(self) -> list[FieldError]:
        """Every rule that spans resources and is broken, e.g. a route to a missing upstream."""
        errors: list[FieldError] = []
        ports: dict[tuple[str, str, int], str] = {}
        for lst in self.listeners.values():
            key = (lst.spec.group, lst.spec.address, lst.spec.port)
            if key in ports:
                errors.append(FieldError(
                    f"Listener/{lst.name}: spec.port",
                    f"{lst.spec.address}:{lst.spec.port} is already used by Listener/"
                    f"{ports[key]} in group {lst.spec.group!r}",
                ))
            ports[key] = lst.name
        for lst in self.listeners.values():
            if lst.spec.tls is not None and lst.spec.tls.certificate != "auto":
                errors.append(FieldError(
                    f"Listener/{lst.name}: spec.tls.certificate",
                    f"{lst.spec.tls.certificate!r} is not supported: use 'auto' (a certificate "
                    "issued by our CA)",
                ))
        for route in self.routes.values():
            bad_hosts = [h for h in route.spec.hosts if not _HOST.match(h)]
            if bad_hosts:
                errors.append(FieldError(
                    f"Route/{route.name}: spec.hosts",
                    f"{bad_hosts} are not host names (printable ASCII without spaces, "
                    "e.g. api.example.com, *.example.com or *)",
                ))
            if route.spec.listener not in self.listeners:
                errors.append(FieldError(
                    f"Route/{route.name}: spec.listener",
                    f"no Listener named {route.spec.listener!r}; apply it first or in one file",
                ))
            if route.spec.upstream not in self.upstreams:
                errors.append(FieldError(
                    f"Route/{route.name}: spec.upstream",
                    f"no Upstream named {route.spec.upstream!r}; apply it first or in one file",
                ))
        for ups in self.upstreams.values():
            for version, spec in ups.spec.versions.items():
                if spec.credential and spec.credential not in self.credentials:
                    errors.append(FieldError(
                        f"Upstream/{ups.name}: spec.versions.{version}.credential",
                        f"no Credential named {spec.credential!r}",
                    ))
        errors.extend(envoy_problems(self.routes.values(), self.upstreams.values(),
                                     self.credentials.values()))
        errors.extend(self._rollout_problems())
        return errors

    def _rollout_problems(self) -> list[FieldError]:
        errors: list[FieldError] = []
        owner: dict[str, str] = {}
        for rollout in self.rollouts.values():
            spec = rollout.spec
            where = f"Rollout/{rollout.name}: spec"
            ups = self.upstreams.get(spec.upstream)
            if ups is None:
                errors.append(
                    FieldError(f"{where}.upstream", f"no Upstream named {spec.upstream!r}")
                )
                continue
            for field_name, version in (("from", spec.from_), ("to", spec.to)):
                if version not in ups.spec.versions:
                    errors.append(FieldError(
                        f"{where}.{field_name}",
                        f"Upstream/{spec.upstream} has no version {version!r} "
                        f"(it has {sorted(ups.spec.versions)})",
                    ))
            errors.extend(_match_problems(f"{where}.match", spec.match))
            if not self.status(rollout.name).active:
                continue  # a finished rollout does not own its upstream any more
            if spec.upstream in owner:
                errors.append(FieldError(
                    f"{where}.upstream",
                    f"Rollout/{owner[spec.upstream]} already manages Upstream/{spec.upstream}; "
                    "one rollout per upstream: delete or finish the other first",
                ))
            owner[spec.upstream] = rollout.name
        return errors

    def check(self) -> None:
        """Errors:
            InvalidInputError: `problems()` is not empty.
        """
        errors = self.problems()
        if errors:
            raise InvalidInputError(errors)


# What a Host header can carry; the translator drops a route with anything else, and a
# group whose config does not translate keeps its last good snapshot: caught at apply.
_HOST = re.compile(r"^[!-~]+$")
# An HTTP header name (RFC 9110 token): Envoy NACKs an empty one and cannot match others.
_TOKEN = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")
# RFC 6265 cookie-octets, optionally in double quotes.
_COOKIE_VALUE = re.compile(r'^("?)[!#-+\--:<-\[\]-~]+\1$')


def _match_problems(where: str, match: Match | None) -> list[FieldError]:
    """A rollout's A/B match: header names Envoy can match, values without line breaks,
    a cookie as `name=value` (what the translator builds the route match from)."""
    if match is None:
        return []
    errors = [
        FieldError(f"{where}.headers", f"{name!r} is not an HTTP header name")
        for name in match.headers if not _TOKEN.match(name)
    ] + [
        FieldError(f"{where}.headers.{name}", f"the value {why}")
        for name, value in match.headers.items() if (why := control_problem(value))
    ]
    if match.cookie is not None:
        name, sep, value = match.cookie.partition("=")
        if not (sep and value.strip("=")) or not _TOKEN.match(name):
            errors.append(FieldError(f"{where}.cookie",
                                     f"{match.cookie!r} is not name=value (e.g. canary=1)"))
        elif not _COOKIE_VALUE.match(value):
            errors.append(FieldError(f"{where}.cookie", (
                f"{match.cookie!r}: a cookie value is printable ASCII without spaces, '\"', "
                "',', ';' or '\\' (RFC 6265), or a Cookie header cannot carry it")))
    return errors
