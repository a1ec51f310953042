"""The reader of a user's ``.npz`` (private): every member checked before it is trusted.

``np.load`` reads an ``.npy`` member up to the size its header declares and stops, so the zip's
CRC-32, checked only at the end of a member, is never checked, and a flipped bit in a header
(a shape, a dtype) silently shifts every value; a header may also declare terabytes in a
file of kilobytes. This reader parses each member's header with ``np.lib.format``, checks
it, then reads the whole member, so that the zip module verifies its CRC.

Contract:
  * :func:`read_arrays` returns ``{key: array}`` for the requested keys (members named
    ``key.npy`` or ``key``), each exactly as saved, or raises :class:`DataError` naming the
    file, the member, what was expected and what was found. It never unpickles.
  * Before allocating, a member's header must declare exactly the bytes the member holds,
    and all requested members together must fit in the memory available.
"""
from __future__ import annotations

import math
import zipfile

import numpy as np

from jaxscratch._idx import DataError
from jaxscratch.devices import available_memory

_CHUNK = 1 << 24  # read members 16 MiB at a time


def _header(f, path, name):
    """``(shape, fortran_order, dtype)`` of the member open in ``f``, checked."""
    version = np.lib.format.read_magic(f)
    if version == (1, 0):
        shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
    elif version == (2, 0):
        shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
    else:  # 3.0 only adds UTF-8 field names of structured dtypes, which no data set here has
        raise DataError(f"{path}: member {name}: expected an .npy header of version 1.0 or 2.0; found {version}")
    if dtype.hasobject:
        raise DataError(f"{path}: member {name} is an object array, which only pickle can read; refused "
                        f"(never unpickled): store numbers")
    return shape, fortran, dtype


def _member(zf: zipfile.ZipFile, info: zipfile.ZipInfo, path, budget: int | None) -> np.ndarray:
    name = info.filename
    with zf.open(info) as f:
        shape, fortran, dtype = _header(f, path, name)
        nbytes = math.prod(shape) * dtype.itemsize
        held = info.file_size - f.tell()
        if nbytes != held:
            raise DataError(f"{path}: member {name}: its header declares {dtype} {shape}, {nbytes} bytes, but the "
                            f"member holds {held}: the header is damaged or the file was cut")
        if budget is not None and nbytes > budget:
            raise DataError(f"{path}: member {name} declares {dtype} {shape}, {nbytes / 2**30:.3g} GiB, more than "
                            f"the {budget / 2**30:.3g} GiB of memory available")
        buffer = bytearray(nbytes)
        view, done = memoryview(buffer), 0
        while done < nbytes:
            n = f.readinto(view[done:done + _CHUNK])
            if not n:
                raise DataError(f"{path}: member {name} ends after {done} of its {nbytes} bytes")
            done += n
        if f.read(1):  # reading to the end makes zipfile check the CRC-32
            raise DataError(f"{path}: member {name} holds more bytes than its header declares")
    array = np.frombuffer(buffer, dtype=dtype)
    return array.reshape(shape[::-1]).T if fortran else array.reshape(shape)


def read_arrays(path, keys) -> dict[str, np.ndarray]:
    """The arrays ``keys`` of the ``.npz`` at ``path``, each verified whole (see the module)."""
    try:
        with zipfile.ZipFile(path) as zf:
            members, twice = {}, set()
            for info in zf.infolist():
                key = info.filename.removesuffix(".npy")
                if key in members:
                    twice.add(key)
                members[key] = info
            missing = [k for k in keys if k not in members]
            if missing:
                raise DataError(f"{path}: missing arrays {missing}; found {sorted(members)}")
            if twice & set(keys):
                raise DataError(f"{path}: expected one member per array; found {sorted(twice & set(keys))} twice")
            budget = available_memory()
            out = {}
            for k in keys:
                out[k] = _member(zf, members[k], path, budget)
                budget = None if budget is None else budget - out[k].nbytes
            return out
    except DataError:
        raise
    except MemoryError:
        raise DataError(f"{path}: its arrays do not fit in this machine's memory") from None
    except Exception as e:  # zipfile, zlib and np.lib.format fail in many ways on damaged bytes (even tokenize's)
        raise DataError(f"{path}: corrupt .npz archive: {type(e).__name__}: {_one_line(e)}") from None


def _one_line(err) -> str:
    text = " ".join(str(err).split())
    return text if len(text) <= 200 else text[:200] + "..."
