"""Notebook functions carried by value: their copy and the process they came from.

A function defined in a notebook (`__main__`) cannot be imported by another process, so its call
carries a copy (cloudpickle: its code and the notebook variables it uses), kept small
(`function_copy`), and the identity of the process that stored it (`process_origin`): only that
process runs the live function, which sees the notebook as it is now; any other runs the copy, since
its own `__main__` may hold another function of the same name. Pure: no storage, no engine.
"""

from __future__ import annotations

import functools
import inspect
import io
import os
import pickle
import types
from collections.abc import Callable
from typing import Any

import cloudpickle

_ORIGIN_MARK = b"O"  # a by-value part that starts with it carries its origin; a pickle starts with 0x80
_ORIGIN_LEN = 16
_origin = os.urandom(_ORIGIN_LEN)


def _new_origin() -> None:
    global _origin
    _origin = os.urandom(_ORIGIN_LEN)


# A forked child's `__main__` is a copy that goes its own way: it is another origin.
os.register_at_fork(after_in_child=_new_origin)


#: The origin of a call whose function is not the one its name finds in this process's `__main__`
#: (a copy made elsewhere, run here, that enqueues; a function renamed or redefined since): it runs
#: as the copy everywhere, never as whatever function bears that name.
COPY_ONLY = bytes(_ORIGIN_LEN)


def process_origin() -> bytes:
    """This process's identity in the calls it stores: random, new in each process and forked child."""
    return _origin


def origin_part(*, live: bool) -> bytes:
    """What a call's by-value part starts with: this process, where the function is the live one
    its name finds here, else `COPY_ONLY`."""
    return _ORIGIN_MARK + (process_origin() if live else COPY_ONLY)


def split_origin(by_value: bytes | None) -> tuple[bytes | None, bytes | None]:
    """(origin, cloudpickled function) of a call's by-value part; calls stored before origins were
    recorded have the function alone."""
    if by_value is None or not by_value.startswith(_ORIGIN_MARK):
        return None, by_value
    start = len(_ORIGIN_MARK)
    return by_value[start : start + _ORIGIN_LEN], (by_value[start + _ORIGIN_LEN :] or None)


#: A notebook function's copy (cloudpickle: its code and the notebook globals it uses) is stored in
#: every job of it, so it is kept small: a function using a notebook's 2 GB DataFrame would otherwise
#: store 2 GB, and take seconds to pickle, at every enqueue.
FUNCTION_COPY_MAX = 250_000
BOUND_FIX = ("To run it on other servers, pass the data it uses as arguments (or load it inside the "
             "function), or move the function into an importable module (for data over the limit, "
             "connect(max_function_copy=…) also raises it)")
#: Why, with `max_function_copy=0`: no notebook function is copied; its jobs stay in this process.
NOT_COPIED = "is not copied: max_function_copy=0 keeps notebook functions to this process"


class _TooLarge(Exception):
    pass


class _BoundedBuffer(io.BytesIO):
    """Where a copy is pickled: refuses to grow past its limit, so a function holding a huge global
    costs a pickling of `limit` bytes, not of the global (a NumPy array is not even copied)."""

    def __init__(self, limit: int) -> None:
        super().__init__()
        self.limit = limit

    def write(self, data: Any) -> int:
        if self.tell() + memoryview(data).nbytes > self.limit:
            raise _TooLarge
        return super().write(data)


def _pickled_within(value: Any, limit: int) -> bytes:
    """`value` pickled by value (cloudpickle); _TooLarge as soon as it passes `limit` bytes."""
    out = _BoundedBuffer(limit)
    cloudpickle.CloudPickler(out, protocol=pickle.HIGHEST_PROTOCOL).dump(value)
    return out.getvalue()


def function_copy(fn: Callable[..., Any], limit: int = FUNCTION_COPY_MAX) -> tuple[bytes | None, str]:
    """A notebook function pickled by value, or None and why it cannot be ("uses …")."""
    target = inspect.unwrap(fn)
    try:
        return _pickled_within(target, limit), ""
    except _TooLarge:
        data = _data_globals(target)
        big = [name for name in data if not _fits(target.__globals__[name], limit)]
        named = ", ".join(big or data) or "the globals it refers to"
        return None, (f"uses more than {human_size(limit)} of the notebook's data by value ({named})")
    except Exception as exc:
        return None, f"cannot be pickled by value ({exc})"


def _fits(value: Any, limit: int) -> bool:
    try:
        _pickled_within(value, limit)
    except _TooLarge:
        return False
    except Exception:  # it cannot be pickled at all: not a matter of size
        return True
    return True


def _data_globals(fn: Any) -> list[str]:
    """The notebook variables `fn` refers to that hold data (not modules, classes or functions)."""
    code = getattr(fn, "__code__", None)
    namespace = getattr(fn, "__globals__", {})
    names: list[str] = []
    pending = [code] if code is not None else []
    while pending:
        current = pending.pop()
        names += [n for n in current.co_names if n in namespace and n not in names]
        pending += [c for c in current.co_consts if isinstance(c, types.CodeType)]
    kinds = (types.ModuleType, type, types.FunctionType, types.BuiltinFunctionType, functools.partial)
    return [n for n in names if not isinstance(namespace[n], kinds)]


def human_size(n: int) -> str:
    """Bytes as people read them in messages: '262.1 kB'."""
    for unit, size in (("GB", 10**9), ("MB", 10**6), ("kB", 10**3)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} bytes"
