"""Notebook functions that cannot be pickled by value: refused only where a copy is needed."""

from __future__ import annotations

import threading

import pytest

from nbjobs.errors import InvalidJobError
from nbjobs.payload import Codec, Signer, function_ref


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
    payload = codec.encode_call(fn, ref, (1,), {}, "pickle", by_value_required=False)  # type: ignore[arg-type]
    call = codec.decode_call(payload)
    assert call.function_by_value is None and call.args == (1,)
