import functools
import os
import stat

import pytest

from nbjobs.errors import ConfigurationError, InvalidJobError, PayloadError
from nbjobs.model import FUNCTION_MAX
from nbjobs.payload import (
    Codec,
    ResultOf,
    Signer,
    function_ref,
    load_secret,
    resolve_function,
    stored_call,
)


def module_level(x: int, **options: object) -> int:
    return x + 1


def test_function_ref_round_trip() -> None:
    ref = function_ref(module_level)
    assert ref == f"{__name__}:module_level"
    assert resolve_function(ref) is module_level


def test_lambdas_and_closures_are_refused_with_the_fix() -> None:
    with pytest.raises(InvalidJobError, match="define it with `def`"):
        function_ref(lambda: 1)

    def inner() -> None: ...

    with pytest.raises(InvalidJobError, match="closure"):
        function_ref(inner)
    with pytest.raises(InvalidJobError, match="not callable"):
        function_ref(42)  # type: ignore[arg-type]


def test_signed_call_round_trip_and_tamper_detection() -> None:
    codec = Codec(Signer(b"k1"))
    data = codec.encode_call(module_level, function_ref(module_level), (1,), {"a": [1, 2]}, "pickle")
    call = codec.decode_call(data)
    assert call.args == (1,) and call.kwargs == {"a": [1, 2]}
    tampered = data[:-1] + bytes([data[-1] ^ 1])
    with pytest.raises(PayloadError, match="does not verify"):
        codec.decode_call(tampered)
    with pytest.raises(PayloadError, match="same NBJOBS_SECRET"):
        Codec(Signer(b"other")).decode_call(data)
    # The arguments inside are read without checking their own signature again (the outer one
    # covers them): a byte changed anywhere in them fails the outer check.
    middle = len(data) // 2
    with pytest.raises(PayloadError, match="does not verify"):
        codec.decode_call(data[:middle] + bytes([data[middle] ^ 1]) + data[middle + 1 :])
    # An envelope that is not signed data at all, under a valid outer signature, is refused.
    forged = codec.signer.sign(b"C" + (4).to_bytes(8, "big") + b"junk")
    with pytest.raises(PayloadError, match="not in nbjobs' signed format"):
        codec.decode_call(forged)


def test_unpicklable_argument_is_named() -> None:
    codec = Codec(Signer(b"k"))
    import threading

    with pytest.raises(InvalidJobError, match="keyword argument 'lock'"):
        codec.encode_call(module_level, "m:f", (1,), {"lock": threading.Lock()}, "pickle")


def test_json_serializer_rejects_non_json_and_round_trips() -> None:
    codec = Codec(Signer(b"k"))
    fix = r"positional argument 0 \(set\) .* pass JSON values .* or leave out serializer='json'"
    with pytest.raises(InvalidJobError, match=fix):
        codec.encode_call(module_level, "m:f", ({1, 2},), {}, "json")
    data = codec.encode_call(module_level, "m:f", ([1, "a"],), {"b": None}, "json")
    call = codec.decode_call(data)
    assert call.args == ([1, "a"],) and call.kwargs == {"b": None}


def test_secret_file_created_with_mode_0600(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.delenv("NBJOBS_SECRET", raising=False)
    monkeypatch.setenv("NBJOBS_HOME", str(tmp_path / "home"))
    key = load_secret()
    path = tmp_path / "home" / "secret"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert load_secret() == key and len(key) == 64


def _key_in_a_new_process(home: str) -> bytes:
    os.environ["NBJOBS_HOME"] = home
    os.environ.pop("NBJOBS_SECRET", None)
    return load_secret()


def test_processes_starting_together_share_one_whole_key(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """The key file was created empty and then written: a process reading it in between got an empty
    key (every job it signed would fail to verify elsewhere)."""
    import multiprocessing

    home = str(tmp_path / "home")
    with multiprocessing.get_context("spawn").Pool(6) as pool:
        keys = pool.map(_key_in_a_new_process, [home] * 12)
    assert len(set(keys)) == 1 and len(keys[0]) == 64
    assert os.listdir(home) == ["secret"]  # the key written aside was removed


def test_a_key_file_that_cannot_be_used_says_so(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.delenv("NBJOBS_SECRET", raising=False)
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "secret").write_bytes(b"\n")
    monkeypatch.setenv("NBJOBS_HOME", str(tmp_path / "empty"))
    with pytest.raises(ConfigurationError, match=r"signing key file .* is empty; delete it"):
        load_secret()
    (tmp_path / "a-file").write_text("")
    monkeypatch.setenv("NBJOBS_HOME", str(tmp_path / "a-file" / "nbjobs"))
    with pytest.raises(ConfigurationError, match=r"cannot read or create the signing key file .*\(Not a "
                       r"directory\); set NBJOBS_SECRET"):
        load_secret()
    monkeypatch.setenv("NBJOBS_SECRET", "from-the-environment")
    assert load_secret() == b"from-the-environment"  # the fix the message names


def test_a_function_reference_longer_than_its_column_is_refused() -> None:
    def stored() -> None: ...

    stored.__qualname__ = "f" * (FUNCTION_MAX + 1)
    with pytest.raises(InvalidJobError, match=rf"at most {FUNCTION_MAX} can be stored"):
        function_ref(stored)


def test_a_call_the_function_cannot_take_is_refused_before_anything_is_stored() -> None:
    codec = Codec(Signer(b"k"))

    def positional(a: int, b: int = 0) -> int:
        return a + b

    for args, kwargs, problem in (((), {}, "missing a required argument: 'a'"),
                                  ((1, 2, 3), {}, "too many positional arguments"),
                                  ((1,), {"c": 3}, "unexpected keyword argument 'c'")):
        expected = rf"m:f\(a: int, b: int = 0\) -> int cannot be called .*{problem}"
        with pytest.raises(InvalidJobError, match=expected):
            codec.encode_call(positional, "m:f", args, kwargs, "pickle")
    # What a decorator may accept is its own business: a wrapper's (*args, **kwargs) is not narrowed
    # to the wrapped function's parameters.
    wrapper = functools.wraps(positional)(lambda *a, **k: positional(*a, **k))
    assert codec.decode_call(codec.encode_call(wrapper, "m:f", (1,), {"retry": True}, "pickle")).kwargs == {
        "retry": True}
    assert codec.decode_call(codec.encode_call(print, "m:f", (1, 2, 3), {}, "pickle")).args == (1, 2, 3)


class Model:
    def __init__(self, k: int) -> None:
        self.k = k

    def fit(self, x: int) -> int:
        return x + self.k

    @classmethod
    def make(cls, k: int) -> "Model":
        return cls(k)

    def __call__(self, x: int) -> int:
        return x * self.k


def numbers(n: int):  # type: ignore[no-untyped-def]
    yield from range(n)


async def anumbers(n: int):  # type: ignore[no-untyped-def]
    for i in range(n):
        yield i


def test_a_bound_method_is_stored_as_its_function_with_the_instance_as_first_argument() -> None:
    model = Model(3)
    fn, args, kwargs = stored_call(model.fit, (4,), {})
    assert fn is Model.fit and args == (model, 4) and kwargs == {}
    assert function_ref(fn) == f"{__name__}:Model.fit"
    assert resolve_function(function_ref(fn))(*args) == 7  # what a worker runs


def test_a_classmethod_stays_bound_to_its_class() -> None:
    fn, args, _ = stored_call(Model.make, (2,), {})
    assert fn == Model.make and args == (2,)
    assert resolve_function(function_ref(fn))(*args).k == 2


def test_a_callable_object_is_stored_as_its_class_call_method() -> None:
    model = Model(5)
    fn, args, _ = stored_call(model, (2,), {})
    assert fn is Model.__call__ and args == (model, 2)
    assert resolve_function(function_ref(fn))(*args) == 10


def test_a_partial_is_stored_as_its_function_with_its_arguments_first() -> None:
    part = functools.partial(functools.partial(module_level, 1), flag=True)
    fn, args, kwargs = stored_call(part, (), {"other": 2})
    assert fn is module_level and args == (1,) and kwargs == {"flag": True, "other": 2}
    # the call's own keywords win, as calling the partial would do
    assert stored_call(part, (), {"flag": False})[2] == {"flag": False}


def test_a_partial_of_a_bound_method_unwraps_both() -> None:
    model = Model(1)
    fn, args, _ = stored_call(functools.partial(model.fit, 9), (), {})
    assert fn is Model.fit and args == (model, 9)


def test_generator_functions_are_refused_with_the_fix() -> None:
    with pytest.raises(InvalidJobError, match=r"numbers is a generator function.*return list"):
        stored_call(numbers, (3,), {})
    with pytest.raises(InvalidJobError, match="anumbers is a generator function"):
        stored_call(anumbers, (3,), {})
    with pytest.raises(InvalidJobError, match="generator function"):
        stored_call(functools.partial(numbers, 3), (), {})


def test_encode_stores_the_unwrapped_call_and_checks_its_arguments() -> None:
    codec = Codec(Signer(b"k"))
    model = Model(2)
    ref, data = codec.encode(model.fit, (1,), {}, "pickle")
    call = codec.decode_call(data)
    assert ref == f"{__name__}:Model.fit" and call.args[1] == 1 and call.args[0].k == 2
    with pytest.raises(InvalidJobError, match="cannot be called with these arguments"):
        codec.encode(model.fit, (1, 2), {}, "pickle")


def test_a_call_with_results_of_other_jobs_is_tagged_and_resolved_before_it_runs() -> None:
    codec = Codec(Signer(b"k"))
    plain = codec.encode_call(module_level, "m:f", (1,), {}, "pickle")
    assert not codec.refers_results(plain)
    data = codec.encode_call(module_level, "m:f", (ResultOf(7),), {"flag": ResultOf(8)}, "pickle")
    assert codec.refers_results(data)
    resolved = codec.resolve_results(data, lambda job_id: job_id * 100)
    assert not codec.refers_results(resolved)
    call = codec.decode_call(resolved)
    assert call.args == (700,) and call.kwargs == {"flag": 800}
    with pytest.raises(PayloadError, match="does not verify"):  # resolving verifies first
        codec.resolve_results(data[:-1] + bytes([data[-1] ^ 1]), lambda job_id: None)
