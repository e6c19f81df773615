"""What the Job page shows of a job's payload: argument and result previews, redacted.

Decoding needs the engine's codec (signed payloads); a payload that does not verify, or a function
that cannot be imported here, degrades to a message or masked arguments, never to an error page.
"""

from __future__ import annotations

from ..model import JobRecord, JobState
from ..payload import Codec
from ..redact import Redactor, call_arguments, short_repr

CACHE_LIMIT = 500


def arguments_preview(
    codec: Codec, redactor: Redactor, record: JobRecord, cache: dict[int, list[tuple[str, str]] | str]
) -> list[tuple[str, str]] | str:
    """(name, preview) per argument, or why they cannot be shown; cached (a payload never changes)."""
    cached = cache.get(record.id)
    if cached is not None:
        return cached
    out = call_arguments(codec, redactor, record.function, record.payload)
    if len(cache) >= CACHE_LIMIT:
        cache.clear()
    cache[record.id] = out
    return out


def result_preview(codec: Codec, redactor: Redactor, record: JobRecord) -> str | None:
    """A short repr of a succeeded job's return value (secret keys of mappings masked)."""
    if record.state is not JobState.SUCCEEDED or record.result is None:
        return None
    try:
        return short_repr(redactor.mask(codec.loads(record.result)))
    except Exception as exc:
        return f"result cannot be shown: {exc}"
