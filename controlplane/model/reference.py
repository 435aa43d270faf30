"""docs/reference.md, generated from the resource models so that it cannot drift from them.

    python -m controlplane.model.reference [--check] [PATH]     (`make docs`)

`render()` walks every kind's pydantic model: each field's YAML name, type, limits and
default come from the model; its description from `reference_text.FIELDS`, else from
its attribute docstring in resources.py; an example per kind from
`reference_text.EXAMPLES`. `problems()` names every field without a description and
every description of a field that no longer exists. Pure but for `main`.
"""

from __future__ import annotations

import ast
import inspect
import itertools
import json
import sys
import textwrap
import types
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import annotated_types as at
import yaml
from pydantic import BaseModel, SecretStr
from pydantic.fields import FieldInfo

from controlplane.model import reference_text as text
from controlplane.model.duration import Duration
from controlplane.model.resources import KINDS, Name, _Resource

OUTPUT = Path("docs/reference.md")
_NAMED_TYPES: tuple[tuple[Any, str], ...] = ((Duration, "duration"), (Name, "name"))
_SCALARS: dict[Any, str] = {str: "string", int: "integer", float: "number", bool: "boolean",
                            SecretStr: "secret string"}
_LONG_DEFAULT = 60
"""Defaults rendered longer than this go below the table, not into a cell."""


def models_of(kind: str) -> list[type[BaseModel]]:
    """The spec model of `kind` and every model nested in it, in the order fields name them."""
    found: list[type[BaseModel]] = []

    def visit(model: type[BaseModel]) -> None:
        if model in found:
            return
        found.append(model)
        for hint in _hints(model).values():
            for inner in _leaves(hint):
                if isinstance(inner, type) and issubclass(inner, BaseModel):
                    visit(inner)

    visit(_hints(KINDS[kind])["spec"])
    return found


def problems() -> list[str]:
    """Every field the reference cannot describe, and every stale description."""
    out: list[str] = []
    known: set[str] = set()
    for model in _all_models():
        for name in model.model_fields:
            key = _key(model, name)
            known.add(key)
            if not _description(model, name):
                out.append(f"{key}: no description; write a docstring under the field in "
                           "resources.py or an entry in reference_text.FIELDS")
    out += [f"{key}: described in reference_text.FIELDS but no such field"
            for key in sorted(set(text.FIELDS) - known)]
    if set(text.KIND_ORDER) != set(KINDS) or set(text.EXAMPLES) != set(KINDS):
        out.append(f"kinds {sorted(KINDS)}: reference_text.KIND_ORDER and EXAMPLES must "
                   "name each once")
    return out


def render() -> str:
    """The whole of docs/reference.md."""
    lines = ["# Resource reference", "",
             "<!-- Generated from controlplane/model by `make docs`; do not edit. -->", "",
             text.INTRO, "Kinds: " + ", ".join(f"[{k}](#{k.lower()})" for k in text.KIND_ORDER)
             + ".", "", "## Fields of every kind", ""]
    lines += _table(_Resource, extra=[
        ("`kind`", "string", "**required**", "The kind, one of the sections below."),
        ("`spec`", "object", "**required**", "The kind's own fields, below."),
    ])
    lines += _object_section(_hints(_Resource)["metadata"], "metadata")
    for kind in text.KIND_ORDER:
        lines += [f"## {kind}", "", text.KIND_INTROS[kind], ""]
        for model, path in zip(models_of(kind), _paths(kind), strict=True):
            lines += _object_section(model, path)
        lines += ["### Example", "", "```yaml", text.EXAMPLES[kind].rstrip(), "```", ""]
    return "\n".join(lines).rstrip() + "\n"


# ---- tables -------------------------------------------------------------------------------


def _object_section(model: type[BaseModel], path: str) -> list[str]:
    lines = [f'<a id="{model.__name__.lower()}"></a>', "", f"### `{path}`", ""]
    doc = vars(model).get("__doc__")  # its own, not Model's
    if doc:
        lines += [inspect.cleandoc(doc), ""]
    return lines + _table(model)


def _table(model: type[BaseModel],
           extra: list[tuple[str, str, str, str]] | None = None) -> list[str]:
    rows = [("field", "type", "default", "description"), ("---", "---", "---", "---")]
    below: list[str] = []
    hints = _hints(model)
    for name, info in model.model_fields.items():
        alias = info.alias or name
        default = _default(model, name, info)
        if len(default) > _LONG_DEFAULT:
            below += [f"Default `{alias}`:", "", "```yaml", yaml.safe_dump(
                info.get_default(call_default_factory=True), sort_keys=False,
                width=1000).rstrip(), "```", ""]
            default = "below"
        rows.append((f"`{alias}`", _type(hints[name], info), default,
                     _description(model, name)))
    rows += extra or []
    cells = ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in rows]
    return [*cells, "", *below]


def _paths(kind: str) -> Iterator[str]:
    """Where each model of `kind` sits in a document, e.g. `spec.versions.<name>.tls`."""
    where: dict[type[BaseModel], str] = {}
    for model in models_of(kind):
        path = where.get(model, "spec")
        yield path
        for name, hint in _hints(model).items():
            alias = model.model_fields[name].alias or name
            for inner in _leaves(hint):
                if isinstance(inner, type) and issubclass(inner, BaseModel):
                    suffix = ".<name>" if typing.get_origin(_strip(hint)) is dict else ""
                    where.setdefault(inner, f"{path}.{alias}{suffix}")


def _type(hint: Any, info: FieldInfo | None = None) -> str:
    base = _type_name(_strip_optional(hint))
    limits = [f"{sym} {getattr(m, attr):g}" for m in (info.metadata if info else [])
              for cls, attr, sym in ((at.Ge, "ge", "≥"), (at.Gt, "gt", ">"),
                                     (at.Le, "le", "≤"), (at.Lt, "lt", "<"))
              if isinstance(m, cls)]
    limits += [f"{word} {_items(getattr(m, attr))}" for m in (info.metadata if info else [])
               for cls, attr, word in ((at.MinLen, "min_length", "at least"),
                                       (at.MaxLen, "max_length", "at most"))
               if isinstance(m, cls) and base.startswith(("list", "map"))]
    return ", ".join([base, *limits])


def _items(count: int) -> str:
    return f"{count} item" if count == 1 else f"{count} items"


def _type_name(hint: Any) -> str:
    for named, label in _NAMED_TYPES:
        if hint == named:
            return label
    hint = _strip(hint)
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is Literal and len(args) == 1:
        return f"`{args[0]}`"
    if origin is Literal:
        return "one of " + ", ".join(f"`{a}`" for a in args)
    if origin is list:
        return f"list of {_type_name(args[0])}"
    if origin is dict:
        return f"map of {_type_name(args[0])} to {_type_name(args[1])}"
    if isinstance(hint, type) and issubclass(hint, BaseModel):
        return f"[{hint.__name__}](#{hint.__name__.lower()})"
    return _SCALARS.get(hint, getattr(hint, "__name__", str(hint)))


def _default(model: type[BaseModel], name: str, info: FieldInfo) -> str:
    override = text.DEFAULTS.get(_key(model, name))
    if override is not None:
        return override
    if info.is_required():
        return "**required**"
    value = info.get_default(call_default_factory=True)
    if value is None:
        return "—"
    if isinstance(value, str) and value:
        return f"`{value}`"
    return f"`{json.dumps(value, ensure_ascii=False)}`"


# ---- descriptions -------------------------------------------------------------------------


def _description(model: type[BaseModel], name: str) -> str:
    return (text.FIELDS.get(_key(model, name))
            or _attribute_docstrings(_owner(model, name)).get(name, ""))


def _attribute_docstrings(model: type) -> dict[str, str]:
    """`field: T = ...` followed by a string literal: that string, one line."""
    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(model)))
    except (OSError, TypeError):
        return {}
    body = tree.body[0].body if tree.body and isinstance(tree.body[0], ast.ClassDef) else []
    out: dict[str, str] = {}
    for node, after in itertools.pairwise(body):
        if (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)
                and isinstance(after, ast.Expr) and isinstance(after.value, ast.Constant)
                and isinstance(after.value.value, str)):
            out[node.target.id] = " ".join(after.value.value.split())
    return out


def _owner(model: type[BaseModel], name: str) -> type:
    return next(c for c in model.__mro__ if name in vars(c).get("__annotations__", {}))


def _key(model: type[BaseModel], name: str) -> str:
    return f"{_owner(model, name).__name__}.{name}"


# ---- typing helpers -----------------------------------------------------------------------


def _hints(model: type) -> dict[str, Any]:
    return typing.get_type_hints(model, include_extras=True)


def _strip(hint: Any) -> Any:
    while typing.get_origin(hint) is typing.Annotated:
        hint = typing.get_args(hint)[0]
    return _strip_optional(hint)


def _strip_optional(hint: Any) -> Any:
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        rest = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(rest) == 1:
            return rest[0]
    return hint


def _leaves(hint: Any) -> Iterator[Any]:
    hint = _strip(hint)
    args = typing.get_args(hint)
    if not args or typing.get_origin(hint) is Literal:
        yield hint
    for arg in args if typing.get_origin(hint) is not Literal else ():
        yield from _leaves(arg)


def _all_models() -> list[type[BaseModel]]:
    out: list[type[BaseModel]] = [_Resource, _hints(_Resource)["metadata"]]
    for kind in KINDS:
        out += [m for m in models_of(kind) if m not in out]
    return out


def main(argv: list[str]) -> int:
    """Write the reference (or, with --check, exit 1 if the file differs)."""
    check = "--check" in argv
    paths = [a for a in argv if a != "--check"]
    path = Path(paths[0]) if paths else OUTPUT
    gaps = problems()
    if gaps:
        print("\n".join(gaps), file=sys.stderr)
        return 1
    wanted = render()
    if check:
        stale = not path.exists() or path.read_text() != wanted
        if stale:
            print(f"{path} is stale: run `make docs`", file=sys.stderr)
        return 1 if stale else 0
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(wanted)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
