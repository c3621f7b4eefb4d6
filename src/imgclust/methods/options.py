"""Method options declared once, with defaults and types, grouped by namespace.

A method declares its options as an :class:`OptionSet` of :class:`Option` s, each in a namespace:

* ``train``: the training loop's settings (:class:`~imgclust.train.loop.TrainConfig` fields), e.g. ``train.lr``;
* ``input``: how the training inputs are built, e.g. ``input.n_views``, ``input.trainable_blocks``;
* ``method``: the method's own settings (its config dataclass), e.g. ``method.w_mmd``;
* ``fit``: how the fit is repeated, e.g. ``fit.n_restarts``.

Users may type a key qualified (``train.epochs=20``) or flat (``epochs=20``) when the flat name is unique
among the method's options. :meth:`OptionSet.resolve` checks names and value types (``ImgclustError`` naming
the valid keys) and fills in every default, so a method reads ``opts["train"]["lr"]`` without ever looking
up a default itself.
"""

from __future__ import annotations

import dataclasses
import inspect
import re
import types
import typing
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping

import numpy as np

from ..errors import ImgclustError

__all__ = ["Option", "Derived", "OptionSet", "ResolvedOptions", "options_from_dataclass", "options_from_signature"]


@dataclass(frozen=True)
class Derived:
    """A default computed from the other resolved values (``fn(values)``, ``values[namespace][name]``)."""

    fn: Callable[[dict[str, dict[str, Any]]], Any]
    doc: str = ""


@dataclass(frozen=True)
class Option:
    """One option: ``namespace.name``, its default (a value or a :class:`Derived`) and accepted type.

    ``kind`` is a type annotation: ``int``, ``float`` (ints accepted and converted), ``bool``, ``str``,
    ``list[int]``, unions with ``None`` (``int | None``), or ``typing.Any``.
    """

    namespace: str
    name: str
    default: Any
    kind: Any = Any
    help: str = ""

    @property
    def key(self) -> str:
        return f"{self.namespace}.{self.name}"


def _accepts(kind: Any, value: Any) -> bool:
    if kind is Any:
        return True
    if kind is type(None):
        return value is None
    origin = typing.get_origin(kind)
    if origin in (typing.Union, types.UnionType):
        return any(_accepts(member, value) for member in typing.get_args(kind))
    if origin in (list, tuple, Iterable) or kind in (list, tuple):
        args = typing.get_args(kind)
        return isinstance(value, (list, tuple)) and (not args or all(_accepts(args[0], v) for v in value))
    if kind is bool:
        return isinstance(value, (bool, np.bool_))
    if kind is int:
        return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))
    if kind is float:
        return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_))
    if isinstance(kind, type):
        return isinstance(value, kind)
    return True


def _convert(kind: Any, value: Any) -> Any:
    """``value`` in ``kind``'s own type: an int given for a float becomes a float, numpy scalars plain ones."""
    if value is None:
        return None
    origin = typing.get_origin(kind)
    if origin in (typing.Union, types.UnionType):
        members = [m for m in typing.get_args(kind) if m is not type(None)]
        if int in members and _accepts(int, value):  # ``int | float`` keeps an int
            return int(value)
        return next((_convert(m, value) for m in members if _accepts(m, value)), value)
    if kind is float:
        return float(value)
    if kind is int:
        return int(value)
    if kind is bool:
        return bool(value)
    if origin is list or kind is list:
        args = typing.get_args(kind)
        return [_convert(args[0], v) for v in value] if args else list(value)
    return value


def _kind_name(kind: Any) -> str:
    if kind is Any:
        return "any value"
    if kind is type(None):
        return "null"
    if typing.get_origin(kind) in (typing.Union, types.UnionType):
        return " or ".join(_kind_name(m) for m in typing.get_args(kind))
    return getattr(kind, "__name__", str(kind)) if typing.get_origin(kind) is None else str(kind)


class ResolvedOptions(Mapping[str, dict[str, Any]]):
    """Every option's value by namespace (``opts["train"]["lr"]``), plus which keys the user gave."""

    def __init__(self, values: dict[str, dict[str, Any]], given: frozenset[str]):
        self._values = values
        self.given = given

    def __getitem__(self, namespace: str) -> dict[str, Any]:
        return self._values[namespace]

    def __iter__(self) -> typing.Iterator[str]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def flat(self) -> dict[str, Any]:
        """``{"namespace.name": value}`` of every option (for logs and run.json)."""
        return {f"{ns}.{name}": value for ns, values in self._values.items() for name, value in values.items()}


class OptionSet:
    """A method's declared options (see the module docstring).

    Args:
        method: the method's name, for messages.
        options: the declarations; a later one with the same key replaces an earlier one (so a method can
            take a shared namespace and override some defaults).
    """

    def __init__(self, method: str, options: Iterable[Option]):
        self.method = method
        self.options: dict[str, Option] = {}
        for option in options:
            self.options[option.key] = option
        self._by_name: dict[str, list[Option]] = {}
        for option in self.options.values():
            self._by_name.setdefault(option.name, []).append(option)

    def keys(self) -> list[str]:
        return sorted(self.options)

    def defaults(self) -> ResolvedOptions:
        return self.resolve({})

    def _find(self, key: str) -> Option:
        if key in self.options:
            return self.options[key]
        found = self._by_name.get(key, [])
        if len(found) == 1:
            return found[0]
        if len(found) > 1:
            raise ImgclustError(f"{self.method} option {key!r} is ambiguous",
                                f"write it with its namespace: {', '.join(o.key for o in found)}")
        raise ImgclustError(f"unknown {self.method} option {key!r}", self._valid_keys_hint())

    def _valid_keys_hint(self) -> str:
        if not self.options:
            return f"{self.method} takes no options"
        return (f"{self.method} accepts (namespace optional where the name is unique): "
                f"{', '.join(self.keys())}")

    def resolve(self, given: Mapping[str, Any]) -> ResolvedOptions:
        """Check ``given`` (flat or qualified keys) and return every option's value, defaults filled in."""
        unknown = [key for key in given if key not in self.options and len(self._by_name.get(key, [])) == 0]
        if unknown:
            raise ImgclustError(f"unknown {self.method} option(s): {', '.join(sorted(unknown))}",
                                self._valid_keys_hint())
        chosen: dict[str, Any] = {}
        for key, value in given.items():
            option = self._find(key)
            if option.key in chosen:
                raise ImgclustError(f"{self.method} option {option.key} is given twice",
                                    f"give either {option.name} or {option.key}, once")
            if not _accepts(option.kind, value):
                raise ImgclustError(f"{self.method} option {option.key} must be {_kind_name(option.kind)}, "
                                    f"got {value!r}", f"e.g. {option.name}={_example(option)}")
            chosen[option.key] = _convert(option.kind, value)
        values: dict[str, dict[str, Any]] = {}
        derived: list[Option] = []
        for option in self.options.values():
            space = values.setdefault(option.namespace, {})
            if option.key in chosen:
                space[option.name] = chosen[option.key]
            elif isinstance(option.default, Derived):
                derived.append(option)
            else:
                space[option.name] = option.default
        for option in derived:
            values[option.namespace][option.name] = option.default.fn(values)
        return ResolvedOptions(values, frozenset(chosen))

    def describe(self) -> list[tuple[str, str, str]]:
        """(key, default, help) of every option, for documentation and ``imgclust methods``."""
        out = []
        for key in self.keys():
            option = self.options[key]
            default = option.default.doc if isinstance(option.default, Derived) else repr(option.default)
            out.append((key, default, option.help))
        return out


def _example(option: Option) -> str:
    default = option.default
    if isinstance(default, Derived) or default is None:
        return "…"
    return str(default).lower() if isinstance(default, bool) else str(default)


def options_from_dataclass(namespace: str, cls: type, *, exclude: Iterable[str] = (),
                           defaults: Mapping[str, Any] | None = None) -> list[Option]:
    """One option per field of dataclass ``cls`` (its annotation is the type), minus ``exclude``; ``defaults``
    replaces some of the field defaults (a value or a :class:`Derived`)."""
    hints = typing.get_type_hints(cls)
    skip = set(exclude)
    defaults = dict(defaults or {})
    docs = documented_names(cls, "Attributes")
    out = []
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        if f.name in defaults:
            default = defaults.pop(f.name)
        elif f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
            default = f.default_factory()  # type: ignore[misc]
        else:
            raise ValueError(f"{cls.__name__}.{f.name} has no default: give one in defaults")
        out.append(Option(namespace, f.name, default, hints.get(f.name, Any), help=docs.get(f.name, "")))
    if defaults:
        raise ValueError(f"defaults for fields {cls.__name__} does not have: {sorted(defaults)}")
    return out


def options_from_signature(namespace: str, fn: Callable[..., Any], *, exclude: Iterable[str] = ()) -> list[Option]:
    """One option per keyword parameter with a default of ``fn`` (its annotation is the type)."""
    hints = typing.get_type_hints(fn)
    skip = set(exclude)
    docs = documented_names(fn, "Args")
    return [Option(namespace, p.name, p.default, hints.get(p.name, Any), help=docs.get(p.name, ""))
            for p in inspect.signature(fn).parameters.values()
            if p.name not in skip and p.default is not inspect.Parameter.empty]


def documented_names(obj: Any, section: str) -> dict[str, str]:
    """The first sentence said of each name in the ``section`` (``Args`` or ``Attributes``) of ``obj``'s
    Google-style docstring, for the one-line help of ``imgclust methods`` (the docstring stays the one source)."""
    lines = inspect.cleandoc(obj.__doc__ or "").splitlines()
    start = next((i + 1 for i, line in enumerate(lines) if line.strip() == f"{section}:"), None)
    if start is None:
        return {}
    docs: dict[str, list[str]] = {}
    name = None
    for line in lines[start:]:
        if line.strip() and not line.startswith(" "):  # the next section (or the text after the section)
            break
        entry = re.match(r"^ {4}(\w+(?:, \w+)*)(?: \([^)]*\))?: ?(.*)$", line)  # "a, b: text" documents both
        if entry:
            name = entry.group(1)
            docs[name] = [entry.group(2)]
        elif name and line.strip():
            docs[name].append(line.strip())
    return {key: _first_sentence(" ".join(text)) for names, text in docs.items() for key in names.split(", ")}


def _first_sentence(text: str) -> str:
    """``text`` up to its first full stop, without reST markup (``code``, :func:`name`)."""
    plain = re.sub(r":\w+:`~?([^`]*)`", r"\1", re.sub(r"``([^`]*)``", r"\1", text))
    return re.split(r"(?<!e\.g)(?<!i\.e)\.\s", plain, maxsplit=1)[0].rstrip(".")
