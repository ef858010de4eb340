"""Loading checkpoints and heads: a refused file is one line of ours, with no torch advice and no warning."""

from __future__ import annotations

import io
import os
import pickle
import warnings

import pytest
import torch

from plankton_core.checkpoint import load_checkpoint, load_pretrained_state
from plankton_core.errors import BadInputError
from plankton_core.heads import load_head
from plankton_core.store import open_store


class _RunsCode:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def _unsafe_files() -> dict[str, bytes]:
    buf = io.BytesIO()
    torch.save({"model": {}, "config": {}, "payload": _RunsCode()}, buf)
    return {
        "torch_save.pt": buf.getvalue(),
        # a bare pickle: torch warns about its protocol before refusing it
        "bare_pickle.pt": pickle.dumps({"model": {}, "config": {}, "payload": _RunsCode()}, protocol=4),
        "truncated.pt": buf.getvalue()[:200],
    }


@pytest.mark.parametrize("name", sorted(_unsafe_files()))
def test_a_refused_file_is_our_one_line_without_torch_advice_or_warnings(tmp_path, name):
    store = open_store(str(tmp_path))
    store.write_bytes(name, _unsafe_files()[name])
    loaders = {
        "checkpoint": lambda: load_checkpoint(store, name),
        "linear head": lambda: load_head(store, name),
        "pretrained weights": lambda: load_pretrained_state(str(tmp_path / name)),
    }
    for what, load in loaders.items():
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            with pytest.raises(BadInputError) as err:
                load()
        message = str(err.value)
        assert [str(w.message) for w in seen] == [], what
        assert message.startswith(f"{what} ") and " is corrupt or unsafe: " in message, message
        assert "\n" not in message and "\x1b" not in message, message
        assert "weights_only" not in message and "likely succeed" not in message, message
        if name != "truncated.pt":
            assert "plankton loads no file that could run code" in message, message
    assert "rerun `plankton linear-sweep --force`" in str(pytest.raises(BadInputError, load_head, store, name).value)
