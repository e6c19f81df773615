"""Hiding secret arguments before they are shown: pure, shared by the dashboard and the views.

An argument is secret when its name (a parameter name, or a key of a mapping passed as an argument)
matches one of the patterns, case-insensitively, anywhere in the name: `api_key`, `DB_PASSWORD`.
"""

from __future__ import annotations

import inspect
import re
import reprlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from .errors import ConfigurationError

if TYPE_CHECKING:
    from .payload import Codec

DEFAULT_PATTERNS: tuple[str, ...] = ("password", "secret", "token", "key", "credential")
MASK = "***"

_repr = reprlib.Repr()
_repr.maxstring = 120
_repr.maxother = 120
_repr.maxlist = _repr.maxtuple = _repr.maxdict = _repr.maxset = 8
_repr.maxlevel = 3


class Redactor:
    """Decides which names are secret and renders argument values with secrets masked."""

    def __init__(self, patterns: Iterable[str] = DEFAULT_PATTERNS) -> None:
        # One string is one pattern (redact="password"), not the patterns "p", "a", "s", …
        self.patterns = (patterns,) if isinstance(patterns, str) else tuple(patterns)
        for pattern in self.patterns:
            try:
                re.compile(pattern)
            except (re.error, TypeError) as exc:
                raise ConfigurationError(
                    f"redact pattern {pattern!r} is not a regular expression ({exc}); escape it with "
                    "re.escape(...) to match it literally"
                ) from None
        joined = "|".join(f"(?:{p})" for p in self.patterns)
        self._regex = re.compile(joined, re.IGNORECASE) if self.patterns else None

    def is_secret(self, name: str) -> bool:
        return self._regex is not None and self._regex.search(name) is not None

    def mask(self, value: Any) -> Any:
        """A copy of `value` with secret keys of (nested) mappings replaced by the mask."""
        if isinstance(value, Mapping):
            return {k: MASK if isinstance(k, str) and self.is_secret(k) else self.mask(v)
                    for k, v in value.items()}
        if isinstance(value, list):
            return [self.mask(v) for v in value]
        if isinstance(value, tuple):
            return tuple(self.mask(v) for v in value)
        return value

    def preview(self, name: str, value: Any) -> str:
        """A short, safe repr of one argument."""
        if self.is_secret(name):
            return MASK
        try:
            return short_repr(self.mask(value))
        except Exception as exc:  # a broken __repr__ must not break the dashboard
            return f"<{type(value).__name__}: repr failed ({exc})>"

    def arguments(
        self, fn: Callable[..., Any] | None, args: Sequence[Any], kwargs: Mapping[str, Any]
    ) -> list[tuple[str, str]]:
        """(name, preview) per argument; positional ones are named from `fn`'s signature, and all
        masked when `fn` is unknown (a function not importable where the dashboard runs)."""
        if fn is None and args:
            # Without the signature a positional secret cannot be told apart: hide them all.
            out = [(f"arg{i}", f"{MASK} (parameter name unknown here)") for i in range(len(args))]
            return out + [(k, self.preview(k, v)) for k, v in kwargs.items()]
        names = _positional_names(fn, len(args))
        out = [(names[i], self.preview(names[i], a)) for i, a in enumerate(args)]
        out += [(k, self.preview(k, v)) for k, v in kwargs.items()]
        return out


def short_repr(value: Any) -> str:
    """reprlib-limited repr; arrays and frames by type and shape only."""
    shape = getattr(value, "shape", None)
    if shape is not None and not isinstance(value, str | bytes):
        return f"<{type(value).__name__} shape={tuple(shape)}>"
    return _repr.repr(value)


def _positional_names(fn: Callable[..., Any] | None, n: int) -> list[str]:
    names = [f"arg{i}" for i in range(n)]
    if fn is None:
        return names
    try:
        params = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):
        return names
    i = 0
    for p in params:
        if i >= n:
            break
        if p.kind is p.VAR_POSITIONAL:
            names[i:] = [f"{p.name}[{j}]" for j in range(n - i)]
            break
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD):
            names[i] = p.name
            i += 1
    return names


def call_arguments(
    codec: Codec, redactor: Redactor, function: str, payload: bytes
) -> list[tuple[str, str]] | str:
    """A stored call's arguments as (name, preview), secrets masked; or why they cannot be shown."""
    try:
        call = codec.decode_call(payload)
    except Exception as exc:  # wrong secret, damaged payload
        return f"arguments cannot be shown: {exc}"
    try:
        fn: Any = codec.load_function(function, call)
    except Exception:  # not importable here: positional arguments are masked (names unknown)
        fn = None
    return redactor.arguments(fn, call.args, call.kwargs)


def arguments_text(items: list[tuple[str, str]] | str) -> str:
    """One line for tables: `user='bob', password=***`."""
    return items if isinstance(items, str) else ", ".join(f"{n}={v}" for n, v in items)
