"""Read the tensors of any torch checkpoint without running code from it.

`torch.load(weights_only=True)` refuses a whole file at the first class it does not know, and a
Lightning checkpoint's `hyper_parameters` often hold the training library's objects (a normaliser,
a loss, a dataset's parameters). With a `--factory` only the weights are needed, so this reader
gives torch's own allowlist (tensors, storages, containers, dtypes: exactly what `weights_only`
admits) its real objects, and every other global an inert `Placeholder` subclass that records the
class's name and whose construction does nothing. A `__reduce__` payload such as `os.system(…)`
therefore becomes a placeholder built from its arguments, never a call. Tensors are restored by
torch itself (its persistent loads and storages), so they equal what `torch.load` gives.
"""

from __future__ import annotations

import functools
import pickle
import types

import torch

__all__ = ["Placeholder", "load_with_placeholders"]


class Placeholder:
    """An object whose class was not loaded: it keeps the class's name and nothing else."""

    qualified_name = "?"

    def __init__(self, *args, **kwargs) -> None:
        """Accept and drop whatever the pickle passes: nothing is constructed or called."""

    def __setstate__(self, state) -> None:
        """Drop the pickled state (it may hold further placeholders; never code)."""

    def __repr__(self) -> str:
        return f"<not loaded: {self.qualified_name}>"


@functools.cache
def _placeholder(module: str, name: str) -> type[Placeholder]:
    """One placeholder class per pickled global, named after it."""
    return type(name, (Placeholder,), {"qualified_name": f"{module}.{name}", "__module__": __name__})


@functools.cache
def _allowed() -> dict[str, object]:
    """What `weights_only` admits: torch's allowlist and the user's registered safe globals."""
    from torch import _weights_only_unpickler as weights_only  # private API, the same list torch.load uses

    allowed = dict(weights_only._get_allowed_globals())
    allowed.update(weights_only._get_user_allowed_globals())
    return allowed


class PlaceholderUnpickler(pickle.Unpickler):
    """An unpickler that resolves only allowlisted globals; everything else becomes a placeholder."""

    placeholders: set[str]

    def find_class(self, module: str, name: str):
        found = _allowed().get(f"{module}.{name}")
        if found is not None:
            return found
        self.placeholders.add(f"{module}.{name}")
        return _placeholder(module, name)


def load_with_placeholders(path) -> tuple[object, list[str]]:
    """The checkpoint's contents, and the names of the globals left as placeholders."""
    seen: set[str] = set()

    class Unpickler(PlaceholderUnpickler):
        placeholders = seen

    module = types.SimpleNamespace(
        __name__="gate_reporter_placeholder_pickle",
        Unpickler=Unpickler,
        load=lambda file, **kwargs: Unpickler(file, **kwargs).load(),
    )
    loaded = torch.load(path, map_location="cpu", weights_only=False, pickle_module=module)
    return loaded, sorted(seen)
