"""Codec names -> factories: spec parsing, wildcards, lazy built-ins and entry-point plugins."""

from __future__ import annotations

import difflib
import fnmatch
import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache
from importlib.metadata import entry_points
from typing import Any

import numpy as np

from bench.codec import Codec, CodecError, CodecInfo, ParameterError, UnknownCodecError

ENTRY_POINT_GROUP = "bench.codecs"


@dataclass(frozen=True)
class Spec:
    info: CodecInfo
    values: tuple[tuple[str, Any], ...]  # every parameter, defaults included, sorted by name

    @property
    def canonical(self) -> str:
        return self._name(self.info.name, ())

    @property
    def curve(self) -> str:
        """The rate–distortion curve this point lies on: its family and every parameter but the
        rate parameter, so `jpeg:optimize=1` and `jpeg` are two curves."""
        return self._name(self.info.family or self.info.name, (self.info.rate_param,))

    @property
    def fixed(self) -> str:
        """The spec without its rate parameter: what a sweep of its own curve holds fixed."""
        return self._name(self.info.name, (self.info.rate_param,))

    def _name(self, head: str, skip: tuple[str, ...]) -> str:
        defaults = {p.name: p.default for p in self.info.params}
        parts = [f"{k}={_fmt(v)}" for k, v in self.values if v != defaults[k] and k not in skip]
        return ":".join([head, *parts])

    def build(self, device: str = "cpu") -> Codec:
        if device not in self.info.devices:
            raise CodecError(
                f"{self.info.name} does not run on {device!r}; it supports "
                + ", ".join(self.info.devices)
            )
        kwargs = dict(self.values)
        if self.info.devices != ("cpu",):
            kwargs["device"] = device
        codec = self.info.load()(**kwargs)
        # The registry's facts are the codec's: one source, whatever the class says.
        codec.name, codec.lossless, codec.learned = self.canonical, self.info.lossless, self.info.learned
        codec.devices = self.info.devices
        return codec


def _fmt(value: Any) -> str:
    if isinstance(value, bool):
        return str(int(value))
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


class Registry:
    """Built-ins from their table; plugins from their entry points, imported when first used (a
    name they claim twice is a problem at once), so a run of built-ins imports no plugin."""

    def __init__(self, builtins: Iterable[CodecInfo], plugins: Iterable[Any] = ()):
        self._loaded: dict[str, CodecInfo] = {info.name: info for info in builtins}
        self._pending: dict[str, Any] = {}  # plugin name -> its entry point, not imported yet
        self.problems: dict[str, str] = {}  # name -> why it is unavailable
        for ep in plugins:
            self._add_plugin(ep)

    @staticmethod
    def _origin(ep: Any) -> str:
        return f"plugin {ep.value}" + (f" ({ep.dist.name})" if getattr(ep, "dist", None) else "")

    def _add_plugin(self, ep: Any) -> None:
        if ep.name in self.problems:
            return
        if ep.name in self._loaded or ep.name in self._pending:
            clash = self._loaded.pop(ep.name, None)
            first = clash.origin if clash is not None else self._origin(self._pending.pop(ep.name))
            self.problems[ep.name] = (
                f"codec name {ep.name!r} is claimed twice: by {first} and by {self._origin(ep)}; "
                "uninstall or rename one of them"
            )
            warnings.warn(self.problems[ep.name], stacklevel=3)
            return
        self._pending[ep.name] = ep

    def _load(self, name: str) -> None:
        ep = self._pending.pop(name)
        origin = self._origin(ep)
        try:
            factory = ep.load()
            if not (isinstance(factory, type) and issubclass(factory, Codec)):
                raise TypeError(f"{ep.value} is not a subclass of bench.Codec")
            self._loaded[name] = CodecInfo(
                name=name,
                factory=factory,
                lossless=bool(factory.lossless),
                description=str(factory.description),
                params=tuple(factory.params),
                devices=tuple(factory.devices),
                origin=origin,
                rate_param=factory.rate_param,
                learned=bool(factory.learned),
                sweep=factory.sweep,
            )
        except Exception as exc:  # a broken plugin must not take the others down
            self.problems[name] = f"codec plugin {name!r} from {origin} failed to load: {exc!r}"
            warnings.warn(self.problems[name], stacklevel=3)

    @property
    def codecs(self) -> dict[str, CodecInfo]:
        """Every available codec, plugins imported."""
        for name in list(self._pending):
            self._load(name)
        return self._loaded

    def names(self) -> list[str]:
        return sorted({*self._loaded, *self._pending})

    def info(self, name: str) -> CodecInfo:
        if name in self._pending:
            self._load(name)
        if name in self._loaded:
            return self._loaded[name]
        if name in self.problems:
            raise UnknownCodecError(self.problems[name])
        close = difflib.get_close_matches(name, self.names(), n=3, cutoff=0.5)
        hint = f"; did you mean {' or '.join(close)}?" if close else ""
        raise UnknownCodecError(
            f"unknown codec {name!r}{hint} (valid: {', '.join(self.names())})"
        )

    def parse(self, text: str) -> list[Spec]:
        """Comma-separated specs with wildcards -> Specs, in order, without duplicates."""
        specs: dict[str, Spec] = {}
        items = [t.strip() for t in text.split(",")]
        if not any(items):
            raise CodecError(f"no codecs given (valid: {', '.join(self.names())})")
        for item in items:
            if not item:
                raise CodecError(f"empty codec name in {text!r}")
            name, *pairs = item.split(":")
            if any(ch in name for ch in "*?["):
                names = fnmatch.filter(self.names(), name)
                if not names:
                    raise UnknownCodecError(
                        f"{name!r} matches no codec (valid: {', '.join(self.names())})"
                    )
            else:
                names = [name]
            for n in names:
                spec = self.spec(n, pairs)
                specs.setdefault(spec.canonical, spec)
        return list(specs.values())

    def spec(self, name: str, pairs: Iterable[str] = ()) -> Spec:
        info = self.info(name)
        values = {p.name: p.default for p in info.params}
        for pair in pairs:
            key, sep, text = pair.partition("=")
            if not sep:
                raise ParameterError(f"{name}: parameter {pair!r} is not key=value")
            values[key] = info.param(key).parse(name, text)
        return Spec(info, tuple(sorted(values.items())))

    def sweep(self, text: str) -> list[Spec]:
        """`jpeg:quality=10..95` (8 even steps) or `jpeg:quality=10/50/90`, comma-separated."""
        specs: dict[str, Spec] = {}
        for item in filter(None, (t.strip() for t in text.split(","))):
            name, *pairs = item.split(":")
            swept = [p for p in pairs if ".." in p or "/" in p]
            if len(swept) != 1:
                raise ParameterError(
                    f"sweep {item!r} needs exactly one key=LOW..HIGH or key=A/B/C parameter, "
                    "e.g. jpeg:quality=10..95")
            key, _, values = swept[0].partition("=")
            param = self.info(name).param(key)
            if ".." in values:
                lo, _, hi = values.partition("..")
                lo, hi = param.parse(name, lo), param.parse(name, hi)
                grid = np.linspace(lo, hi, SWEEP_POINTS)
                values = [int(round(v)) if param.kind is int else float(v) for v in grid]
            else:
                values = values.split("/")
            fixed = [p for p in pairs if p is not swept[0]]
            for v in dict.fromkeys(map(str, values)):
                spec = self.spec(name, [*fixed, f"{key}={v}"])
                specs.setdefault(spec.canonical, spec)
        return list(specs.values())


SWEEP_POINTS = 8


def with_param(spec: Spec, key: str, value: Any) -> Spec:
    """The same codec with one parameter replaced, validated; unchanged if it has no such key."""
    values = dict(spec.values)
    if key not in values:
        return spec
    values[key] = spec.info.param(key).parse(spec.info.name, value)
    return Spec(spec.info, tuple(sorted(values.items())))


@lru_cache(maxsize=1)
def default_registry() -> Registry:
    from bench_codecs import BUILTINS

    return Registry(BUILTINS, entry_points(group=ENTRY_POINT_GROUP))


def list_codecs() -> list[CodecInfo]:
    reg = default_registry()
    return [reg.codecs[n] for n in reg.names()]


def parse_specs(text: str) -> list[Spec]:
    return default_registry().parse(text)


def get_codec(spec: str, device: str = "cpu") -> Codec:
    """Build one codec from a spec such as ``"jpeg:quality=50"``."""
    specs = parse_specs(spec)
    if len(specs) != 1:
        raise CodecError(f"{spec!r} names {len(specs)} codecs; get_codec builds one")
    return specs[0].build(device)
