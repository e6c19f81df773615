"""Function references, argument serializers and payload signing.

A payload is `MAGIC + HMAC-SHA256 + body`. The signature is checked before anything is unpickled,
so a database writer without the key cannot make a worker run code. Functions are stored by
reference (`module:qualname`); a function defined in a notebook (`__main__`) is also carried by value
with the process it came from (`copies`), so a worker process or another server can run it, and
only that process runs the live function.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import hmac
import importlib
import inspect
import json
import logging
import os
import pickle
import tempfile
import types
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cloudpickle

from .copies import (
    BOUND_FIX,
    FUNCTION_COPY_MAX,
    NOT_COPIED,
    function_copy,
    human_size,
    origin_part,
    process_origin,
    split_origin,
)
from .errors import (
    ConfigurationError,
    FunctionNotFoundError,
    InvalidJobError,
    NotImportableHereWarning,
    PayloadError,
    caller_stacklevel,
)
from .model import FUNCTION_MAX, PAYLOAD_MAX

log = logging.getLogger("nbjobs.payload")

MAGIC = b"NBJ1"

#: What a job runs: a callable, or a function's name as text, "module:qualname" (`named_function`).
Target = Callable[..., Any] | str
_MAC_LEN = 32
SERIALIZERS = ("pickle", "json")


def nbjobs_home() -> Path:
    """The user's nbjobs folder (NBJOBS_HOME, else ~/.nbjobs)."""
    return Path(os.environ.get("NBJOBS_HOME") or Path.home() / ".nbjobs")


def load_secret() -> bytes:
    """The signing key: NBJOBS_SECRET, else a key file created once with mode 0600.

    The file appears whole or not at all (written aside, then linked into place): processes
    starting together on a new machine read the one key, never a file still empty."""
    env = os.environ.get("NBJOBS_SECRET")
    if env:
        return env.encode()
    path = nbjobs_home() / "secret"
    try:
        return _read_key(path)
    except FileNotFoundError:
        pass
    except OSError as exc:
        raise _key_file_error(path, exc) from exc
    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        key = os.urandom(32).hex().encode()
        fd, aside = tempfile.mkstemp(dir=path.parent, prefix=".secret-")  # mode 0600
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(key)
            try:
                os.link(aside, path)  # atomic: the file is whole or absent
            except FileExistsError:  # another process linked its key first
                pass
            except OSError:  # a file system without hard links: created in place, as before
                with contextlib.suppress(FileExistsError), os.fdopen(
                        os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb") as fh:
                    fh.write(key)
        finally:
            os.unlink(aside)
        return _read_key(path)
    except OSError as exc:
        raise _key_file_error(path, exc) from exc


def _read_key(path: Path) -> bytes:
    key = path.read_bytes().strip()
    if not key:
        raise ConfigurationError(
            f"the signing key file {path} is empty; delete it to have a new key made (jobs stored with "
            "the old key will then not verify), or set NBJOBS_SECRET"
        )
    return key


def _key_file_error(path: Path, exc: OSError) -> ConfigurationError:
    return ConfigurationError(
        f"cannot read or create the signing key file {path} ({exc.strerror or exc}); set NBJOBS_SECRET "
        "(the same for every server and client of the database), or NBJOBS_HOME to a writable folder"
    )


class Signer:
    """Signs and verifies payload bytes with HMAC-SHA256."""

    def __init__(self, key: bytes | None = None) -> None:
        self._key = key if key is not None else load_secret()

    @property
    def key(self) -> bytes:
        """The signing key (handed to worker processes over their pipe, never through the environment)."""
        return self._key

    def sign(self, body: bytes) -> bytes:
        return MAGIC + hmac.new(self._key, body, hashlib.sha256).digest() + body

    def verify(self, data: bytes) -> bytes:
        """Return the body, or raise PayloadError; never unpickles."""
        if not data.startswith(MAGIC) or len(data) < len(MAGIC) + _MAC_LEN:
            raise PayloadError("payload is not in nbjobs' signed format; it was not written by nbjobs")
        mac = data[len(MAGIC) : len(MAGIC) + _MAC_LEN]
        body = data[len(MAGIC) + _MAC_LEN :]
        expected = hmac.new(self._key, body, hashlib.sha256).digest()
        if not hmac.compare_digest(mac, expected):
            raise PayloadError(
                "payload signature does not verify: it was written with another secret or altered. "
                "Give every server and client the same NBJOBS_SECRET (or the same ~/.nbjobs/secret file)."
            )
        return body


# --- function references -------------------------------------------------------------------


def stored_call(
    fn: Callable[..., Any], args: Sequence[Any], kwargs: Mapping[str, Any]
) -> tuple[Callable[..., Any], Sequence[Any], Mapping[str, Any]]:
    """The call in a form that can be stored: a function found by name and its arguments.

    A bound method's instance, a callable object and a `functools.partial`'s arguments become
    arguments of the function underneath (so `enqueue(model.fit, df)` runs `Model.fit(model, df)`,
    with `model` pickled like any argument). A generator function is refused: calling one runs none
    of its body, so the job would do nothing.
    """
    if type(fn) is types.FunctionType and not _is_generator_function(fn):  # most calls: as they are
        return fn, args, kwargs
    args, kwargs = tuple(args), dict(kwargs)
    while True:
        if isinstance(fn, functools.partial):
            args, kwargs, fn = (*fn.args, *args), {**fn.keywords, **kwargs}, fn.func
        elif inspect.ismethod(fn) and not isinstance(fn.__self__, type):  # a classmethod stays bound
            args, fn = (fn.__self__, *args), fn.__func__
        elif not isinstance(fn, type) and not hasattr(fn, "__qualname__") and inspect.isfunction(
            call := _call_method(type(fn))
        ):  # an instance of a class with __call__
            args, fn = (fn, *args), call
        else:
            break
    if _is_generator_function(fn):
        raise InvalidJobError(
            f"{getattr(fn, '__qualname__', fn)} is a generator function: calling it only creates a "
            "generator, so the job would run none of its body. Return a list instead (e.g. "
            "`return list(...)`), or loop inside the job"
        )
    return fn, args, kwargs


def _call_method(cls: type) -> Any:
    """The `__call__` a class defines or inherits (None if it has none)."""
    return next((vars(k)["__call__"] for k in cls.__mro__ if "__call__" in vars(k)), None)


def _is_generator_function(fn: Callable[..., Any]) -> bool:
    try:
        return _cached_is_generator(fn)
    except TypeError:  # unhashable: not cached
        return inspect.isgeneratorfunction(fn) or inspect.isasyncgenfunction(fn)


@functools.lru_cache(maxsize=1024)
def _cached_is_generator(fn: Callable[..., Any]) -> bool:
    return inspect.isgeneratorfunction(fn) or inspect.isasyncgenfunction(fn)


def function_ref(fn: Callable[..., Any]) -> str:
    """`module:qualname` for a plain function or method; clear errors for what cannot be stored."""
    if not callable(fn):
        raise InvalidJobError(f"{fn!r} is not callable; pass the function itself, e.g. enqueue(train, df)")
    target = inspect.unwrap(fn)
    module = getattr(target, "__module__", None)
    qualname = getattr(target, "__qualname__", None)
    if module is None or qualname is None:
        raise InvalidJobError(
            f"{fn!r} has no module-level name to store; wrap the call in a function defined at module "
            "or notebook level"
        )
    if "<lambda>" in qualname:
        raise InvalidJobError(
            "a lambda cannot be stored as a job; define it with `def` at module or notebook level"
        )
    if "<locals>" in qualname:
        raise InvalidJobError(
            f"{qualname} is defined inside another function (a closure) and cannot be found again by name; "
            "move it to module or notebook level and pass what it captured as arguments"
        )
    ref = f"{module}:{qualname}"
    if len(ref) > FUNCTION_MAX:
        raise InvalidJobError(
            f"function reference {ref[:60]!r}… is {len(ref)} characters; at most {FUNCTION_MAX} can be "
            "stored: give the function a shorter module path or name"
        )
    return ref


def resolve_function(ref: str) -> Callable[..., Any]:
    """Import `module:qualname`; FunctionNotFoundError if it no longer exists."""
    module_name, _, qualname = ref.partition(":")
    try:
        # Not `sys.modules.get()` first: while another worker thread is still importing the module,
        # it is already in sys.modules half-initialised; import_module waits for that import to end.
        obj: Any = importlib.import_module(module_name)
        for part in qualname.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as exc:
        raise FunctionNotFoundError(
            f"function {ref} cannot be found ({exc}); was it renamed or removed? "
            "Requeue the job after restoring it, or delete the job"
        ) from exc
    if not callable(obj):
        raise FunctionNotFoundError(f"{ref} is not callable")
    return obj  # type: ignore[no-any-return]


def named_function(name: str) -> Callable[..., Any] | None:
    """A job function given by name, "module:qualname" (as RQ's `enqueue("pkg.mod.fn")` and Celery's
    `send_task`): the function itself when it imports here, so its call is checked as any other;
    None when its module cannot be imported here (a server's own code, a library only the servers
    have), to be stored by name with a warning. A name that cannot be right is refused."""
    module, sep, qualname = name.partition(":")
    if not sep or not all(part.isidentifier() for part in [*module.split("."), *qualname.split(".")]):
        raise InvalidJobError(
            f"{name!r} is not a function's name; write it as 'module:function' (e.g. 'reports:build'), "
            "or pass the function itself"
        )
    if needs_by_value(name):
        raise InvalidJobError(
            f"{name!r} names a function of this notebook or script, which other processes cannot import; "
            "pass the function itself"
        )
    try:
        importlib.import_module(module)
    except ImportError as exc:
        warnings.warn(
            f"{name} cannot be imported here ({exc}): it is stored by name for the servers that can "
            "import it, and its arguments are not checked against its parameters. Give it a queue only "
            "those servers serve (options(queue=…)): a server without it fails the job",
            NotImportableHereWarning, stacklevel=caller_stacklevel(),
        )
        return None
    except Exception as exc:
        raise InvalidJobError(f"importing {module} for {name} failed: {type(exc).__name__}: {exc}") from exc
    try:
        return resolve_function(name)
    except FunctionNotFoundError as exc:
        why = exc.__cause__ or exc
        raise InvalidJobError(f"{name} cannot be used as a job: {why}; check the name") from exc


def _live_here(ref: str, fn: Callable[..., Any]) -> bool:
    try:
        return inspect.unwrap(resolve_function(ref)) is inspect.unwrap(fn)  # through `@nb.job`
    except FunctionNotFoundError:
        return False


def needs_by_value(ref: str) -> bool:
    """Functions from `__main__` (notebooks, scripts) cannot be imported elsewhere: ship them by value."""
    return ref.startswith("__main__:") or ref.startswith("__mp_main__:")


def unresolvable(ref: str) -> str | None:
    """Why `ref` can run on no server, or None if it can here or may elsewhere.

    `__main__` functions are carried by value in the payload, so they always can. A module that does
    not import here for want of another module (ImportError: code or a library only other servers
    have, as for a function named by text) may import on another server: None, so a recurring fire
    still becomes a job for the servers that can run it. A module that imports but lacks the function
    (renamed or removed), or fails to import for another reason, cannot run anywhere like this.
    """
    if needs_by_value(ref):
        return None
    try:
        importlib.import_module(ref.partition(":")[0])
    except ImportError:
        return None
    except Exception as exc:  # the module itself fails to import: say so, never raise to the caller
        return f"function {ref} cannot be imported ({type(exc).__name__}: {exc})"
    try:
        resolve_function(ref)
    except FunctionNotFoundError as exc:
        cause = exc.__cause__
        return f"function {ref} cannot be found" + (f" ({cause})" if cause is not None else " (not callable)")
    return None


def check_arguments(fn: Callable[..., Any], ref: str, args: Sequence[Any], kwargs: Mapping[str, Any]) -> None:
    """Refuse now a call that could only fail with a TypeError when it runs (a missing or unknown
    argument). The function's own signature, not a wrapped one's: a decorator may change it."""
    try:
        signature = _cached_signature(fn)
    except TypeError:  # a bound method of an unhashable object: not cached
        signature = _signature(fn)
    if signature is None:
        return
    try:
        signature.bind(*args, **kwargs)
    except TypeError as exc:
        raise InvalidJobError(
            f"{ref}{signature} cannot be called with these arguments ({exc}); fix the arguments "
            "or the function's parameters"
        ) from None


def _signature(fn: Callable[..., Any]) -> inspect.Signature | None:
    try:
        return inspect.signature(fn, follow_wrapped=False)
    except (TypeError, ValueError):  # some builtins and C functions have none: nothing to check
        return None


_cached_signature = functools.lru_cache(maxsize=1024)(_signature)


# --- serializers ---------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class Call:
    """What a worker runs: the function (or its reference) and its arguments."""

    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    function_by_value: bytes | None = None
    #: The process that stored a `__main__` function's call (`process_origin`); None for other
    #: functions and for calls stored before origins were recorded.
    origin: bytes | None = None


@dataclass(frozen=True)
class ResultOf:
    """In a stored call, the place of another job's result: a `Job` passed as an argument. The job
    waits for that one, and a worker passes its result in its place (`Codec.resolve_results`)."""

    job_id: int

    def __repr__(self) -> str:  # as the dashboard and `jobs(args=True)` show the argument
        return f"<result of job {self.job_id}>"


def _call_tag(args: Sequence[Any], kwargs: Mapping[str, Any]) -> bytes:
    """A call envelope's tag: b"R" when some argument is another job's result, else b"C"."""
    if any(isinstance(v, ResultOf) for v in args) or any(isinstance(v, ResultOf) for v in kwargs.values()):
        return b"R"
    return b"C"


class Codec:
    """Encodes calls and results with one serializer and signs them."""

    def __init__(
        self, signer: Signer | None = None, max_bytes: int = PAYLOAD_MAX, copy_max: int = FUNCTION_COPY_MAX
    ) -> None:
        self.signer = signer or Signer()
        self.max_bytes = max_bytes  #: the longest body `dumps` stores (arguments, a result)
        self.copy_max = copy_max  #: the longest copy of a notebook function (0: none is copied)

    # pickle bodies start with b"P", json bodies with b"J"
    def dumps(self, value: Any, serializer: str = "pickle", what: str = "value") -> bytes:
        if serializer == "json":
            try:
                body = b"J" + json.dumps(value, separators=(",", ":")).encode()
            except (TypeError, ValueError) as exc:
                raise InvalidJobError(
                    f"{what} is not JSON-serializable ({exc}); use serializer='pickle' or pass plain data"
                ) from exc
        elif serializer == "pickle":
            try:
                body = b"P" + cloudpickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
            except Exception as exc:
                raise InvalidJobError(
                    f"{what} ({type(value).__name__}) cannot be pickled: {exc}; use plain data (or "
                    "save the object to a file and pass or return its path)"
                ) from exc
        else:
            raise InvalidJobError(f"unknown serializer {serializer!r}; use one of {SERIALIZERS}")
        if len(body) > self.max_bytes:
            raise InvalidJobError(
                f"{what}: {human_size(len(body))} once serialized, more than the "
                f"{human_size(self.max_bytes)} "
                "a job may store in the database (max_payload); save large data to a file (e.g. "
                "df.to_parquet(path)) and pass or return its path"
            )
        return self.signer.sign(body)

    def loads(self, data: bytes) -> Any:
        return self._loads_body(self.signer.verify(data))

    def _inner(self, envelope: bytes) -> Any:
        """A call's arguments, inside a payload whose signature was just checked: that signature
        covers these bytes too, so their own is not checked again (an HMAC a job, on a worker)."""
        if not envelope.startswith(MAGIC) or len(envelope) < len(MAGIC) + _MAC_LEN:
            raise PayloadError("payload is not in nbjobs' signed format; it was not written by nbjobs")
        return self._loads_body(envelope[len(MAGIC) + _MAC_LEN :])

    @staticmethod
    def _loads_body(body: bytes) -> Any:
        kind, rest = body[:1], body[1:]
        if kind == b"J":
            return json.loads(rest)
        if kind == b"P":
            return pickle.loads(rest)  # the signature was verified above
        raise PayloadError("payload body has an unknown serializer tag")

    def encode(
        self, fn: Target, args: Sequence[Any], kwargs: Mapping[str, Any], serializer: str,
        *, on_bound: Callable[[str], None] | None = None,
    ) -> tuple[str, bytes]:
        """A job's function reference and signed payload (`stored_call`, then `encode_call`)."""
        if isinstance(fn, str):
            live = named_function(fn)
            if live is None:  # stored by name alone: nothing here to check the call against
                return fn, self.encode_call(None, fn, args, kwargs, serializer)
            fn = live
        fn, args, kwargs = stored_call(fn, args, kwargs)
        ref = function_ref(fn)
        return ref, self.encode_call(fn, ref, args, kwargs, serializer, on_bound=on_bound)

    def encode_call(
        self,
        fn: Callable[..., Any] | None,
        ref: str,
        args: Sequence[Any],
        kwargs: Mapping[str, Any],
        serializer: str,
        *,
        on_bound: Callable[[str], None] | None = None,
    ) -> bytes:
        """Serialize a call; name the first argument that cannot be serialized and store nothing.

        A notebook function that cannot be copied (`function_copy`: it uses a lock or a connection
        from the notebook's globals, or too much of its data) is refused without `on_bound` (process
        executor, recurring jobs: they run elsewhere); with it, it is stored by reference only, to
        run only in this process, and `on_bound` is told why (the caller routes and warns).
        """
        if fn is not None:  # None: a function named by text that is not importable here
            check_arguments(fn, ref, args, kwargs)
        by_value = None
        if fn is not None and needs_by_value(ref):
            by_value = origin_part(live=_live_here(ref, fn))
            copy, why = function_copy(fn, self.copy_max) if self.copy_max else (None, NOT_COPIED)
            if copy is not None:
                by_value += copy
            elif on_bound is None:
                raise InvalidJobError(f"function {ref} cannot be copied into the job: it {why}. {BOUND_FIX}")
            else:
                on_bound(why)
        if serializer == "json":
            value: Any = {"args": list(args), "kwargs": dict(kwargs)}
            self._check_each(
                args, kwargs, lambda v: json.dumps(v), "JSON-serializable",
                "pass JSON values (str, numbers, bools, None, lists, dicts) or leave "
                "out serializer='json'",
            )
            envelope = self.dumps(value, "json", "arguments")
            return self.signer.sign(_call_tag(args, kwargs) + _pack(envelope, by_value))
        try:
            envelope = self.dumps({"args": tuple(args), "kwargs": dict(kwargs)}, "pickle", "arguments")
        except Exception:
            self._check_each(
                args, kwargs, lambda v: cloudpickle.dumps(v), "picklable",
                "pass data (a path, an id, a DataFrame) rather than live objects such as open files, "
                "locks or connections",
            )
            raise
        return self.signer.sign(_call_tag(args, kwargs) + _pack(envelope, by_value))

    @staticmethod
    def _check_each(
        args: Sequence[Any], kwargs: Mapping[str, Any], probe: Callable[[Any], Any], kind: str, fix: str
    ) -> None:
        named: list[tuple[str, Any]] = [(f"positional argument {i}", a) for i, a in enumerate(args)]
        named += [(f"keyword argument {k!r}", v) for k, v in kwargs.items()]
        for label, value in named:
            try:
                probe(value)
            except Exception as exc:
                raise InvalidJobError(
                    f"{label} ({type(value).__name__}) is not {kind}: {exc}; {fix}"
                ) from exc

    def decode_call(self, data: bytes) -> Call:
        body = self.signer.verify(data)
        if body[:1] not in (b"C", b"R"):
            raise PayloadError("payload is not a call envelope")
        envelope, by_value = _unpack(body[1:])
        call = self._inner(envelope)
        origin, function = split_origin(by_value)
        return Call(args=tuple(call["args"]), kwargs=dict(call["kwargs"]), function_by_value=function,
                    origin=origin)

    @staticmethod
    def refers_results(data: bytes) -> bool:
        """Whether a call's arguments include other jobs' results (`ResultOf`), from its tag alone:
        only such payloads are decoded before they run (`resolve_results`)."""
        return data[len(MAGIC) + _MAC_LEN : len(MAGIC) + _MAC_LEN + 1] == b"R"

    def resolve_results(self, data: bytes, result_of: Callable[[int], Any]) -> bytes:
        """The call with every `ResultOf` replaced by that job's result (`result_of(job_id)`)."""
        body = self.signer.verify(data)
        envelope, by_value = _unpack(body[1:])
        call = self._inner(envelope)

        def value(v: Any) -> Any:
            return result_of(v.job_id) if isinstance(v, ResultOf) else v

        resolved = {"args": tuple(value(a) for a in call["args"]),
                    "kwargs": {k: value(v) for k, v in call["kwargs"].items()}}
        return self.signer.sign(b"C" + _pack(self.dumps(resolved, "pickle", "arguments"), by_value))

    def load_function(self, ref: str, call: Call, prefer_live: bool = True) -> Callable[..., Any]:
        """The live function when it resolves here (a notebook's own server), else the copy by value.

        A notebook's function is live only in the process that stored the call: elsewhere `__main__`
        is another notebook or script, and a function of the same name there is not this one.
        """
        if call.origin is not None and call.origin != process_origin():
            if call.function_by_value is None:
                raise FunctionNotFoundError(
                    f"{ref} is a function of the notebook or script that enqueued this job, in another "
                    "process, and it could not be stored with the job (it cannot be pickled by value): "
                    "only that process's own server can run it. Requeue it there, or move the function "
                    "into an importable module"
                )
            prefer_live = False
        if prefer_live or call.function_by_value is None:
            try:
                return resolve_function(ref)
            except FunctionNotFoundError:
                if call.function_by_value is None:
                    raise
        assert call.function_by_value is not None
        return pickle.loads(call.function_by_value)  # type: ignore[no-any-return]


def _pack(envelope: bytes, by_value: bytes | None) -> bytes:
    fn = by_value or b""
    return len(envelope).to_bytes(8, "big") + envelope + fn


def _unpack(data: bytes) -> tuple[bytes, bytes | None]:
    n = int.from_bytes(data[:8], "big")
    envelope = data[8 : 8 + n]
    fn = data[8 + n :]
    return envelope, (fn or None)
