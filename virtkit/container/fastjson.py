"""JSON on the runtime's start path through the standard library's own C codec (`_json`), without `import json`.

`import json` brings in `re` and `enum` (about 5 ms here) and the create/start/delete cycle is measured against
runc's. `_json` is the scanner and encoder that `json` itself uses; what `json` adds in Python (hooks, indent,
error positions in the message) this path does not need. Errors are ValueError, as with `json`.
"""

from __future__ import annotations

import _json

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

_WS = " \t\n\r"
_CONSTANTS = {"-Infinity": float("-inf"), "Infinity": float("inf"), "NaN": float("nan")}


class _DecodeContext:
    """The attributes _json.make_scanner reads from a json.JSONDecoder."""

    strict = True
    object_hook = None
    object_pairs_hook = None
    parse_float = float
    parse_int = int
    parse_constant = _CONSTANTS.__getitem__


_scan = _json.make_scanner(_DecodeContext())  # type: ignore[arg-type]  # duck-typed, as json passes its decoder


def _unserialisable(obj: object) -> object:
    raise TypeError(f"Object of type {type(obj).__name__} is not JSON serializable")


# markers (circular check), default, string encoder, indent, key separator, item separator, sort_keys, skipkeys,
# allow_nan: json.dumps' defaults, as json.JSONEncoder passes them
_encode = _json.make_encoder({}, _unserialisable, _json.encode_basestring_ascii, None, ": ", ", ", False, False, True)


def loads(data: str | bytes | bytearray) -> Any:
    text = data.decode() if isinstance(data, bytes | bytearray) else data
    start = len(text) - len(text.lstrip(_WS))
    try:
        obj, end = _scan(text, start)
    except StopIteration as exc:  # the C scanner clears its memo itself after each call
        raise ValueError(f"invalid JSON: expecting a value at position {exc.value}") from None
    except SystemError:
        # the C scanner reports a syntax error through json.decoder.JSONDecodeError, which it finds only once
        # json is imported: on this (rare) path, let json itself parse and raise its ValueError with the position
        import json

        return json.loads(text)
    if text[end:].strip(_WS):
        raise ValueError(f"invalid JSON: extra data at position {end}")
    return obj


def dumps(obj: object) -> str:
    return "".join(_encode(obj, 0))
