"""Notebook functions that cannot be pickled by value: refused only where a copy is needed."""

from __future__ import annotations

import os
import pickle
import sys
import threading

import cloudpickle
import pytest

from nbjobs.copies import COPY_ONLY, process_origin
from nbjobs.errors import InvalidJobError
from nbjobs.payload import Codec, Signer, _pack, function_ref


def notebook_function_using_a_lock() -> object:
    namespace = {"__name__": "__main__", "lock": threading.Lock()}
    exec("def uses_lock(x):\n    with lock:\n        return x + 1\n", namespace)
    return namespace["uses_lock"]


def test_an_unpicklable_notebook_function_is_stored_by_reference_for_the_thread_executor() -> None:
    codec = Codec(Signer(b"k"))
    fn = notebook_function_using_a_lock()
    ref = function_ref(fn)  # type: ignore[arg-type]
    assert ref == "__main__:uses_lock"
    with pytest.raises(InvalidJobError, match="cannot be pickled by value"):
        codec.encode_call(fn, ref, (1,), {}, "pickle")  # type: ignore[arg-type]
    reasons: list[str] = []
    payload = codec.encode_call(fn, ref, (1,), {}, "pickle", on_bound=reasons.append)  # type: ignore[arg-type]
    call = codec.decode_call(payload)
    assert call.function_by_value is None and call.args == (1,)
    assert reasons == ["cannot be pickled by value (cannot pickle '_thread.lock' object)"]


def notebook_function() -> object:
    namespace = {"__name__": "__main__"}
    exec("def double(x):\n    return 2 * x\n", namespace)
    return namespace["double"]


def test_a_notebook_functions_call_records_the_process_that_stored_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    codec = Codec(Signer(b"k"))
    fn = notebook_function()
    monkeypatch.setattr(sys.modules["__main__"], "double", fn, raising=False)
    call = codec.decode_call(codec.encode_call(fn, "__main__:double", (1,), {}, "pickle"))  # type: ignore[arg-type]
    assert call.origin == process_origin()
    # Another function than the one `__main__` has by that name (a copy run here, a function
    # redefined since): a copy everywhere, here too.
    other = notebook_function()
    copied = codec.decode_call(codec.encode_call(other, "__main__:double", (1,), {}, "pickle"))  # type: ignore[arg-type]
    assert copied.origin == COPY_ONLY != process_origin()
    assert copied.function_by_value is not None
    assert codec.load_function("__main__:double", copied) is not fn
    assert call.function_by_value is not None and pickle.loads(call.function_by_value)(4) == 8
    imported = codec.decode_call(codec.encode_call(Signer, "nbjobs.payload:Signer", (b"k",), {}, "pickle"))
    assert imported.origin is None and imported.function_by_value is None  # nothing added to such calls


def test_a_call_stored_before_origins_were_recorded_still_loads() -> None:
    codec = Codec(Signer(b"k"))
    envelope = codec.dumps({"args": (3,), "kwargs": {}}, "pickle", "arguments")
    old = codec.signer.sign(b"C" + _pack(envelope, cloudpickle.dumps(notebook_function())))
    call = codec.decode_call(old)
    assert call.origin is None and call.args == (3,)
    assert codec.load_function("__main__:double", call)(3) == 6


def test_a_forked_child_is_another_origin() -> None:
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report its origin and leave at once
        os.write(write, process_origin())
        os._exit(0)
    os.close(write)
    child = os.read(read, 64)
    os.close(read)
    os.waitpid(pid, 0)
    assert len(child) == len(process_origin()) and child != process_origin()
