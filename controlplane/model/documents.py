"""YAML/JSON documents ⇄ validated resources, collecting every error at once."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from typing import Any

import yaml
from pydantic import SecretStr, TypeAdapter
from pydantic import ValidationError as PydanticValidationError

from controlplane.errors import FieldError, InvalidInputError
from controlplane.model.resources import KINDS, AnyResource, Resource

_ADAPTER: TypeAdapter[Resource] = TypeAdapter(AnyResource)


class _Loader(yaml.SafeLoader):
    """YAML 1.2 booleans: only true/false, so `retries: {on: 5xx}` keeps its key `on`."""


_Loader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:bool",
    re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"),
    list("tTfF"),
)


def load_yaml_documents(text: str) -> list[Any]:
    """Parse YAML 1.2-style (no `on`/`yes` booleans).

    Errors:
        InvalidInputError: the text is not valid YAML.
    """
    try:
        return [d for d in yaml.load_all(text, Loader=_Loader) if d is not None]
    except yaml.YAMLError as exc:
        raise InvalidInputError([FieldError("yaml", str(exc).replace("\n", " "))]) from exc

# Plural and short names accepted on the command line, like kubectl's.
KIND_ALIASES: dict[str, str] = {}
for _kind in KINDS:
    for _alias in (_kind, _kind.lower(), _kind.lower() + "s"):
        KIND_ALIASES[_alias] = _kind
KIND_ALIASES.update({"proxy-groups": "ProxyGroup", "proxygroups": "ProxyGroup"})


def canonical_kind(text: str) -> str:
    """`upstreams` → `Upstream`.

    Errors:
        InvalidInputError: not a kind this control plane knows.
    """
    kind = KIND_ALIASES.get(text) or KIND_ALIASES.get(text.lower())
    if kind is None:
        raise InvalidInputError(
            [FieldError("kind", f"unknown kind {text!r}; known kinds: {', '.join(KINDS)}")]
        )
    return kind


def _where(doc: Mapping[str, Any], index: int) -> str:
    kind = doc.get("kind", "?")
    meta = doc.get("metadata")
    name = meta.get("name", "?") if isinstance(meta, dict) else "?"
    return f"document {index + 1} ({kind}/{name})"


def validate_documents(docs: Iterable[Any]) -> list[Resource]:
    """Validate raw documents (already parsed mappings) into resources.

    Errors:
        InvalidInputError: lists every invalid field of every document, and
            duplicate kind/name pairs.
    """
    resources: list[Resource] = []
    errors: list[FieldError] = []
    seen: set[tuple[str, str]] = set()
    for index, doc in enumerate(docs):
        if doc is None:
            continue
        if not isinstance(doc, dict):
            errors.append(FieldError(f"document {index + 1}", "is not a mapping"))
            continue
        where = _where(doc, index)
        kind = doc.get("kind")
        if kind not in KINDS:
            errors.append(
                FieldError(f"{where}: kind", f"unknown kind {kind!r}; known: {', '.join(KINDS)}")
            )
            continue
        # Like kubectl: `status` is the control plane's to write; a round-tripped
        # `get -o yaml` may carry it, and apply ignores it.
        doc = {k: v for k, v in doc.items() if k != "status"}
        try:
            resource = _ADAPTER.validate_python(doc)
        except PydanticValidationError as exc:
            for err in exc.errors():
                errors.append(_field_error(where, err["loc"][1:], err["msg"]))
            continue
        key = (resource.kind, resource.name)
        if key in seen:
            errors.append(FieldError(where, "appears twice in the input"))
        seen.add(key)
        resources.append(resource)
    if errors:
        raise InvalidInputError(errors)
    return resources


_SUBFIELD = re.compile(r"^([a-z][A-Za-z0-9_.]*): (.*)$", re.S)


def _field_error(where: str, loc: tuple[int | str, ...], msg: str) -> FieldError:
    # Cross-field validators name their field first ("active: ..."): move it into the path.
    msg = msg.removeprefix("Value error, ")
    path = [str(p) for p in loc]
    match = _SUBFIELD.match(msg)
    if match:
        path.append(match.group(1))
        msg = match.group(2)
    return FieldError(f"{where}: {'.'.join(path) or 'document'}", msg)


def parse_yaml(text: str) -> list[Resource]:
    """Parse a multi-document YAML (or JSON) text into validated resources.

    Errors:
        InvalidInputError: the YAML is malformed or any document is invalid.
    """
    docs = load_yaml_documents(text)
    if not docs:
        raise InvalidInputError([FieldError("input", "no documents found")])
    return validate_documents(docs)


def _reveal(value: Any) -> Any:
    if isinstance(value, SecretStr):
        return value.get_secret_value()
    return value


def to_document(resource: Resource, *, reveal_secrets: bool = False) -> dict[str, Any]:
    """The resource as the user wrote it (unset defaults omitted).

    Secret values print as `[redacted]` unless `reveal_secrets` (for the store only).
    """
    if reveal_secrets:
        data = resource.model_dump(mode="python", by_alias=True, exclude_unset=True)
        return json.loads(json.dumps(data, default=_reveal))  # type: ignore[no-any-return]
    data = resource.model_dump(mode="json", by_alias=True, exclude_unset=True)
    spec = data.get("spec", {})
    if "value" in spec:
        spec["value"] = "[redacted]"
    data["apiVersion"] = resource.api_version
    data["kind"] = resource.kind
    return _ordered(data)


def _ordered(data: dict[str, Any]) -> dict[str, Any]:
    head = {k: data[k] for k in ("apiVersion", "kind", "metadata", "spec") if k in data}
    return head | {k: v for k, v in data.items() if k not in head}


def from_stored(raw: bytes) -> Resource:
    """Decode a resource the store wrote (JSON with secrets revealed)."""
    return _ADAPTER.validate_json(raw)


def to_stored(resource: Resource) -> bytes:
    """Encode a resource for the store: canonical JSON, secrets included."""
    doc = to_document(resource, reveal_secrets=True)
    doc["apiVersion"] = resource.api_version
    doc["kind"] = resource.kind
    return json.dumps(_ordered(doc), sort_keys=True, separators=(",", ":")).encode()
