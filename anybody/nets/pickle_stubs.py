"""Read tensors out of a pickled PyTorch checkpoint without running any of the code it names.

Some released checkpoints (AdaFace's subject generator) are whole pickled ``nn.Module`` objects, not state dicts:
``torch.load(weights_only=True)`` refuses them and the full unpickler would import and call whatever the file
names. Here the ``.pt`` zip is read directly (so the hosts' own ``torch.load`` patches play no part), tensors and
plain containers are rebuilt, every class is replaced by an inert :class:`Stub` that only records its state, and a
file that reaches for anything able to run code (``os``, ``subprocess``, ``builtins.eval`` ...) is refused.
:func:`module_tensors` then walks the stub tree like ``state_dict()`` does.
"""
from __future__ import annotations

import collections
import io
import pickle
import warnings
import zipfile
from pathlib import Path
from typing import Any

import torch

from ..errors import ModelFileError

#: modules whose globals only a malicious or broken file would name: refused, with the name in the message
_REFUSED_MODULES = ("builtins", "__builtin__", "os", "posix", "nt", "subprocess", "sys", "socket", "shutil",
                    "runpy", "importlib", "pickle", "_pickle", "marshal", "code", "codeop", "pty", "ctypes",
                    "multiprocessing", "webbrowser", "functools", "operator", "types", "inspect", "io", "pathlib",
                    "tempfile", "signal", "threading", "asyncio", "pdb", "timeit", "platform", "zipimport")
#: plain containers a pickle may build through ``builtins`` (nothing that allocates what the file asks for)
_BUILTINS_ALLOWED = {"set": set, "frozenset": frozenset, "slice": slice, "complex": complex}
#: callables that ordinary checkpoints name (``torch.detach`` pickles as ``getattr``; hooks hold ``partial``): inert stubs
_STUBBED_CALLABLES = {("builtins", "getattr"), ("__builtin__", "getattr"), ("functools", "partial")}


class Stub:
    """Stands in for any class the file names; keeps what the pickle gives it and runs nothing."""

    _stub_name = "Stub"

    def __init__(self, *args, **kwargs) -> None:
        self.__dict__["_stub_args"] = args

    def __setstate__(self, state) -> None:
        if isinstance(state, tuple) and len(state) == 2:  # (dict state, slot state)
            for part in state:
                if isinstance(part, dict):
                    self.__dict__.update(part)
        elif isinstance(state, dict):
            self.__dict__.update(state)
        else:
            self.__dict__["_stub_state"] = state

    def __setitem__(self, key, value) -> None:  # a dict subclass in the file (SETITEMS)
        self.__dict__.setdefault("_stub_items", {})[key] = value

    def append(self, value) -> None:  # a list subclass (APPENDS)
        self.__dict__.setdefault("_stub_list", []).append(value)

    def extend(self, values) -> None:
        self.__dict__.setdefault("_stub_list", []).extend(values)

    def __repr__(self) -> str:
        return f"<stub {self._stub_name}>"


class _StorageType:
    """What a ``torch.*Storage`` name stands for in a checkpoint: only its dtype (never a class that allocates)."""

    def __init__(self, dtype: torch.dtype) -> None:
        self.dtype = dtype


def _storage_type(name: str) -> _StorageType | None:
    if name == "UntypedStorage":
        return _StorageType(torch.uint8)
    cls = vars(torch).get(name)  # vars: torch's lazy __getattr__ would import modules for unknown names
    if isinstance(cls, type) and name.endswith("Storage"):
        with warnings.catch_warnings():  # legacy storage classes warn when asked their dtype
            warnings.simplefilter("ignore", UserWarning)
            dtype = getattr(cls, "dtype", None)
        if isinstance(dtype, torch.dtype):
            return _StorageType(dtype)
    return None


def _stub_class(module: str, name: str) -> type:
    return type(name, (Stub,), {"_stub_name": f"{module}.{name}", "__module__": "anybody.stubs"})


def _reconstructor(cls, base, state):
    """``copyreg._reconstructor`` (protocol 0/1 objects), for stub classes only."""
    if not (isinstance(cls, type) and issubclass(cls, Stub)):
        raise ModelFileError(f"refusing to rebuild {cls!r}")
    obj = cls.__new__(cls)
    if state is not None:
        obj.__setstate__(state)
    return obj


class _Unpickler(pickle.Unpickler):
    def __init__(self, data: io.BytesIO, archive: zipfile.ZipFile, prefix: str) -> None:
        super().__init__(data)
        self.archive, self.prefix, self.stubs, self.storages = archive, prefix, {}, {}

    def find_class(self, module: str, name: str):
        root = module.split(".")[0]
        if module in ("builtins", "__builtin__") and name in _BUILTINS_ALLOWED:  # protocol 2 says __builtin__
            return _BUILTINS_ALLOWED[name]
        if (module, name) in _STUBBED_CALLABLES:
            return self._stub(module, name)
        if root in _REFUSED_MODULES or (module == "copyreg" and name != "_reconstructor"):
            raise ModelFileError(f"the file asks to call {module}.{name}, which a checkpoint never needs; it may be "
                                 "malicious, and it was not loaded (nothing in it was run)")
        if (module, name) == ("copyreg", "_reconstructor"):
            return _reconstructor
        if (module, name) == ("collections", "OrderedDict"):
            return collections.OrderedDict
        if module == "torch._utils" and name in ("_rebuild_tensor_v2", "_rebuild_tensor", "_rebuild_parameter",
                                                 "_rebuild_parameter_with_state"):
            return getattr(torch._utils, name)
        if module == "torch" and name.endswith("Storage"):
            marker = _storage_type(name)
            if marker is None:
                raise ModelFileError(f"unknown storage type torch.{name}")
            return marker
        if module == "torch" and isinstance(vars(torch).get(name), torch.dtype):
            return vars(torch)[name]
        if (module, name) in (("torch", "Size"), ("torch", "device"), ("torch.nn.parameter", "Parameter")):
            return {"Size": torch.Size, "device": torch.device, "Parameter": torch.nn.Parameter}[name]
        return self._stub(module, name)

    def _stub(self, module: str, name: str) -> type:
        key = (module, name)
        if key not in self.stubs:
            self.stubs[key] = _stub_class(module, name)
        return self.stubs[key]

    def persistent_load(self, pid):
        """A storage record of the zip format: ('storage', storage type, key, location, numel), read once per key,
        only from an uncompressed entry of exactly the size the record states."""
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage" and isinstance(pid[1], _StorageType)):
            raise ModelFileError(f"unexpected persistent record {pid!r:.80}")
        _, storage_type, key, _location, numel = pid
        if key in self.storages:
            return self.storages[key]
        name = f"{self.prefix}data/{key}"
        try:
            info = self.archive.getinfo(name)
        except KeyError:
            raise ModelFileError(f"the tensor data {name} is missing") from None
        itemsize = torch.empty(0, dtype=storage_type.dtype).element_size()
        if info.compress_type != zipfile.ZIP_STORED or not isinstance(numel, int) or info.file_size != numel * itemsize:
            raise ModelFileError(f"the tensor data {name} is not what torch.save writes (compressed, or not "
                                 f"{numel} x {itemsize} bytes)")
        data = bytearray(self.archive.read(name))
        untyped = torch.frombuffer(data, dtype=torch.uint8).untyped_storage() if data else torch.UntypedStorage(0)
        storage = torch.storage.TypedStorage(wrap_storage=untyped, dtype=storage_type.dtype, _internal=True)
        self.storages[key] = storage
        return storage


def load_stubbed(path: str | Path) -> Any:
    """The object in a ``torch.save`` zip file, with classes as :class:`Stub` and tensors as tensors."""
    path = Path(path)
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise ModelFileError(f"{path} is not a PyTorch checkpoint (zip) file, or it is truncated ({exc}).") from exc
    with archive:
        pickles = [n for n in archive.namelist() if n.endswith("/data.pkl") or n == "data.pkl"]
        if not pickles:
            raise ModelFileError(f"{path} has no data.pkl: not a checkpoint written by torch.save.")
        prefix = pickles[0][: -len("data.pkl")]
        try:
            return _Unpickler(io.BytesIO(archive.read(pickles[0])), archive, prefix).load()
        except ModelFileError as exc:
            raise ModelFileError(f"{path}: {exc}") from exc
        except (pickle.UnpicklingError, EOFError, KeyError, zipfile.BadZipFile, ValueError, TypeError,
                AttributeError, RuntimeError) as exc:
            raise ModelFileError(f"{path} could not be read as a checkpoint ({type(exc).__name__}: {exc}); it may be "
                                 "truncated or damaged. Download it again.") from exc


def module_tensors(obj: Any, prefix: str = "", _seen: set | None = None) -> dict[str, torch.Tensor]:
    """What ``state_dict()`` would give for a stubbed ``nn.Module``: ``_parameters``, ``_buffers`` and plain tensor
    attributes (some checkpoints keep tensors there), recursing into ``_modules`` with dotted names (each object
    once: a crafted file may contain cycles)."""
    _seen = set() if _seen is None else _seen
    if id(obj) in _seen:
        return {}
    _seen.add(id(obj))
    out: dict[str, torch.Tensor] = {}
    state = getattr(obj, "__dict__", {})
    for group in ("_parameters", "_buffers"):
        for name, value in (state.get(group) or {}).items():
            if isinstance(value, torch.Tensor):
                out[prefix + name] = value.detach()
    for name, value in state.items():
        if isinstance(value, torch.Tensor) and not name.startswith("_"):
            out[prefix + name] = value.detach()
    for name, child in (state.get("_modules") or {}).items():
        if child is not None:
            out.update(module_tensors(child, f"{prefix}{name}.", _seen))
    return out


def attribute(obj: Any, name: str, default=None):
    """A plain (non-tensor) attribute of a stubbed object, e.g. ``num_out_embs_per_layer``."""
    return getattr(obj, "__dict__", {}).get(name, default)
