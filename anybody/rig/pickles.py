"""Reading the FLAME/DECA pickles without chumpy, scipy or the full unpickler.

FLAME's ``generic_model.pkl`` is a Python 2 pickle of numpy arrays, chumpy ``Ch`` objects (whose value is their
``x`` attribute) and a scipy sparse matrix; DECA's ``landmark_embedding.npy`` is a pickled dict holding numpy
arrays and two torch tensors. chumpy does not import on numpy >= 1.24, and the full unpickler would run whatever the
file names. Here numpy arrays and torch tensors are rebuilt, chumpy and scipy classes become inert stubs that keep
their state (:mod:`anybody.nets.pickle_stubs`), and anything able to run code is refused before it is called.
"""
from __future__ import annotations

import collections
import io
import pickle
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import ModelFileError
from ..nets.pickle_stubs import Stub, _reconstructor, _stub_class

#: numpy's own array/dtype rebuilders under their numpy 1 and numpy 2 module names
_MULTIARRAY = __import__("numpy._core.multiarray" if np.__version__ >= "2" else "numpy.core.multiarray",
                         fromlist=["_reconstruct"])
_NUMPY = {("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype}
for _module in ("numpy.core.multiarray", "numpy._core.multiarray"):
    _NUMPY[(_module, "_reconstruct")] = _MULTIARRAY._reconstruct
    _NUMPY[(_module, "scalar")] = _MULTIARRAY.scalar
#: plain containers a pickle may build by name
_CONTAINERS = {("collections", "OrderedDict"): collections.OrderedDict, ("__builtin__", "set"): set,
               ("builtins", "set"): set, ("__builtin__", "frozenset"): frozenset, ("builtins", "frozenset"): frozenset}
#: packages whose classes are data we know how to read (everything else is refused)
_DATA_MODULES = ("chumpy.", "scipy.sparse.")


def _tensor_from_bytes(data: bytes):
    """A torch storage pickled inside a plain pickle (``torch.storage._load_from_bytes``): read with
    ``weights_only=True``."""
    with warnings.catch_warnings():  # torch notes that plain pickles use a newer protocol than torch.save's
        warnings.filterwarnings("ignore", message="Detected pickle protocol")
        return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)


def _latin1_bytes(text: str, encoding: str = "latin1") -> bytes:
    """How protocol 2 writes ``bytes`` under Python 3 (numpy's raw array data): ``_codecs.encode(text, 'latin1')``."""
    if not isinstance(text, str) or encoding.replace("-", "").lower() != "latin1":
        raise ModelFileError(f"unexpected encoded data ({encoding!r})")
    return text.encode("latin1")


class _Unpickler(pickle.Unpickler):
    def __init__(self, stream, classes: dict) -> None:
        super().__init__(stream, encoding="latin1")
        self.classes = classes

    def find_class(self, module: str, name: str):
        key = (module, name)
        if key in _NUMPY:
            return _NUMPY[key]
        if key in _CONTAINERS:
            return _CONTAINERS[key]
        if key == ("copy_reg", "_reconstructor") or key == ("copyreg", "_reconstructor"):
            return _reconstructor
        if key in (("__builtin__", "object"), ("builtins", "object")):  # protocols 0/1: _reconstructor's base
            return object
        if key == ("_codecs", "encode"):
            return _latin1_bytes
        if key == ("torch.storage", "_load_from_bytes"):
            return _tensor_from_bytes
        if module == "torch._utils" and name in ("_rebuild_tensor_v2", "_rebuild_tensor"):
            return getattr(torch._utils, name)
        if f"{module}.".startswith(_DATA_MODULES):
            return self.classes.setdefault(key, _stub_class(module, name))
        raise ModelFileError(f"the file asks for {module}.{name}, which a FLAME/DECA data file never contains; it was "
                             "not loaded (nothing in it was run)")


def load_restricted(path: Path, what: str, source: str) -> Any:
    """The object in a pickle (or a ``.npy`` holding a pickled object array), with only data rebuilt."""
    if not path.is_file():
        raise ModelFileError(f"{what} not found: {path}. {source}")
    data = path.read_bytes()
    stream = io.BytesIO(data)
    if data.startswith(b"\x93NUMPY"):
        version = np.lib.format.read_magic(stream)
        header = (np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0)
        shape, _, dtype = header(stream)
        if dtype != object:
            return np.lib.format.read_array(io.BytesIO(data), allow_pickle=False)
    try:
        obj = _Unpickler(stream, {}).load()
    except ModelFileError as exc:
        raise ModelFileError(f"{path.name}: {exc}") from exc
    except Exception as exc:
        raise ModelFileError(f"{path.name} could not be read as {what} ({type(exc).__name__}: {str(exc)[:120]}); it "
                             f"may be truncated or damaged. {source}") from exc
    if isinstance(obj, np.ndarray) and obj.dtype == object and obj.shape == ():
        obj = obj.item()  # np.save of a dict: a 0-d object array
    return obj


def as_array(value: Any, key: str, path: Path) -> np.ndarray:
    """A numpy array from an array, a tensor, a chumpy ``Ch`` record (its ``x``) or a scipy sparse record."""
    if isinstance(value, np.ndarray):
        return value
    if isinstance(value, torch.Tensor):
        return value.numpy()
    if isinstance(value, Stub):
        state = value.__dict__
        if isinstance(state.get("x"), np.ndarray):
            return state["x"]
        if all(k in state for k in ("data", "indices", "indptr")) and ("_shape" in state or "shape" in state):
            return _dense_from_compressed(state, value._stub_name)
        raise ModelFileError(f"{path.name}: '{key}' is a {value._stub_name} whose value cannot be read without running "
                             "chumpy; convert the file with FLAME's own tools or download it again.")
    raise ModelFileError(f"{path.name}: '{key}' is a {type(value).__name__}, not an array.")


def _dense_from_compressed(state: dict, name: str) -> np.ndarray:
    """A scipy CSC/CSR matrix's pickled state -> the dense array (FLAME's joint regressor is 5 x 5023)."""
    shape = tuple(state.get("_shape") or state.get("shape"))
    data, indices, indptr = (np.asarray(state[k]) for k in ("data", "indices", "indptr"))
    by_column = "csc" in name
    major = shape[1] if by_column else shape[0]
    if len(indptr) != major + 1 or indptr[-1] != len(data) or len(indices) != len(data):
        raise ModelFileError(f"a sparse matrix ({name}) in the file is inconsistent; the file is damaged")
    dense = np.zeros(shape, dtype=np.float64)
    for m in range(major):
        rows = indices[indptr[m]:indptr[m + 1]]
        values = data[indptr[m]:indptr[m + 1]]
        if by_column:
            dense[rows, m] += values
        else:
            dense[m, rows] += values
    return dense
