"""The runtime's JSON codec over _json: the same text and values as json, errors as ValueError, no json import."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from hypothesis import given
from hypothesis import strategies as st

from virtkit.container import fastjson

_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4), max_leaves=20)


@given(_json_values)
def test_same_text_and_values_as_json(value: object) -> None:
    text = fastjson.dumps(value)
    assert text == json.dumps(value)
    assert fastjson.loads(text) == json.loads(text)
    assert fastjson.loads(text.encode()) == value or value != value


@pytest.mark.parametrize("bad", ["", "   ", "{", "[1,]", "1 2", '{"a":1}x', '{"a" 1}', "{bad", "nul"])
def test_malformed_json_is_a_value_error(bad: str) -> None:
    with pytest.raises(ValueError):
        fastjson.loads(bad)


def test_unserialisable_values_are_a_type_error() -> None:
    with pytest.raises(TypeError, match="not JSON serializable"):
        fastjson.dumps({"a": object()})


def test_the_start_path_imports_neither_json_nor_re() -> None:
    code = ("import sys; import virtkit.container.runtime, virtkit.container.cli, virtkit.container.init; "
            "print(sorted(m for m in ('json', 're', 'enum', 'socket', 'typing') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-I", "-S", "-c", f"import sys; sys.path[:0] = {sys.path!r}; {code}"],
                         capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
