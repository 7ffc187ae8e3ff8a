"""OpenVINO's C API (``libopenvino_c``, shipped in the ``openvino`` wheel) through ctypes, for the call the harness times.

Why: the Python binding's ``infer`` builds a dictionary of new output views on every call, microseconds that an
application in C or C++ does not pay and ``benchmark_app``'s loop does not time; on a ~100 µs engine they alone put the
report's p50 a few per cent above the tool's (docs/measurements.md). A ctypes call into ``ov_infer_request_infer``
costs a fraction of that. The request is compiled from the same IR with the same properties as the runner's Python one,
so it runs the same kernels; each input is the request's own tensor, written in place, as an application reusing its
buffers writes it. A large input is set on the caller's memory instead (``share``), as the Python path sets it.
"""

from __future__ import annotations

import ctypes
import functools
import weakref
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from edgeship.backends.base import InputWrites

_P = ctypes.c_void_p
_OUT = ctypes.POINTER(ctypes.c_void_p)


class NativeError(RuntimeError):
    """The C API is missing or refused a step: the caller times through the Python binding instead."""


class _Shape(ctypes.Structure):
    _fields_ = [("rank", ctypes.c_int64), ("dims", ctypes.POINTER(ctypes.c_int64))]


def _shape(dims: tuple[int, ...]) -> _Shape:
    return _Shape(len(dims), (ctypes.c_int64 * len(dims))(*dims))


@functools.cache
def _library() -> ctypes.CDLL:
    import openvino

    found = sorted((Path(openvino.__file__).parent / "libs").glob("libopenvino_c.so*")) + \
        sorted(Path(openvino.__file__).parent.glob("libs/openvino_c.dll"))
    if not found:
        raise NativeError("libopenvino_c is not in the openvino package")
    try:
        lib = ctypes.CDLL(str(found[0]))
    except OSError as exc:
        raise NativeError(f"cannot load {found[0].name}: {exc}") from exc

    def declare(name: str, args: list[Any] | None, result: Any) -> None:
        function = getattr(lib, name, None)
        if function is None:
            raise NativeError(f"{found[0].name} has no {name}")
        if args is not None:  # None: variadic, its arguments given as ctypes values
            function.argtypes = args
        function.restype = result

    for name, args in {"ov_core_create": [_OUT], "ov_compiled_model_create_infer_request": [_P, _OUT],
                       "ov_infer_request_get_tensor": [_P, ctypes.c_char_p, _OUT],
                       "ov_infer_request_set_tensor": [_P, ctypes.c_char_p, _P],
                       "ov_infer_request_get_output_tensor_by_index": [_P, ctypes.c_size_t, _OUT],
                       "ov_tensor_set_shape": [_P, _Shape], "ov_tensor_data": [_P, _OUT],
                       "ov_tensor_get_byte_size": [_P, ctypes.POINTER(ctypes.c_size_t)],
                       "ov_tensor_create_from_host_ptr": [ctypes.c_int, _Shape, _P, _OUT],
                       "ov_tensor_get_element_type": [_P, ctypes.POINTER(ctypes.c_int)],
                       "ov_infer_request_infer": [_P]}.items():
        declare(name, args, ctypes.c_int)
    declare("ov_core_compile_model_from_file", None, ctypes.c_int)
    for name in ("ov_tensor_free", "ov_infer_request_free", "ov_compiled_model_free", "ov_core_free"):
        declare(name, [_P], None)
    if hasattr(lib, "ov_get_last_err_msg"):
        lib.ov_get_last_err_msg.argtypes, lib.ov_get_last_err_msg.restype = [], ctypes.c_char_p
    return lib


def _check(lib: ctypes.CDLL, status: int, step: str) -> None:
    if status != 0:
        message = lib.ov_get_last_err_msg() if hasattr(lib, "ov_get_last_err_msg") else None
        detail = message.decode(errors="replace").strip().splitlines()[0] if message else f"status {status}"
        raise NativeError(f"OpenVINO C API, {step}: {detail}")


def _free_all(lib: ctypes.CDLL, handles: list[tuple[str, int]]) -> None:
    for function, handle in reversed(handles):
        getattr(lib, function)(handle)
    handles.clear()


class NativeRequest:
    """One compiled model and one infer request of the C API, with its inputs bound to numpy views of its own tensors."""

    def __init__(self, engine: Path, device: str, properties: Mapping[str, object]) -> None:
        self._lib = lib = _library()
        self._handles: list[tuple[str, int]] = []  # (free function, handle), freed in reverse
        self._finalizer = weakref.finalize(self, _free_all, lib, self._handles)
        core, compiled, request = _P(), _P(), _P()
        _check(lib, lib.ov_core_create(ctypes.byref(core)), "core")
        self._handles.append(("ov_core_free", core.value))
        pairs = [ctypes.c_char_p(str(text).encode()) for key, value in properties.items() for text in (key, value)]
        _check(lib, lib.ov_core_compile_model_from_file(_P(core.value), str(engine).encode(), device.encode(),
                                                        ctypes.c_size_t(len(pairs)), ctypes.byref(compiled), *pairs),
               f"compiling {engine.name}")
        self._handles.append(("ov_compiled_model_free", compiled.value))
        _check(lib, lib.ov_compiled_model_create_infer_request(compiled, ctypes.byref(request)), "infer request")
        self._handles.append(("ov_infer_request_free", request.value))
        self._request = request.value
        self._tensors: dict[str, int] = {}  # input name → the request's own tensor
        self._held: dict[str, np.ndarray] = {}  # input name → the caller's memory a shared input reads

    def close(self) -> None:
        self._finalizer()

    def bind(self, feed: Mapping[str, np.ndarray], share: frozenset[str] = frozenset()) -> InputWrites:
        """Each input of ``feed`` shaped in the request and a writer for it: a copy into the request's own tensor, or for
        a name in ``share`` a tensor set on the given array's memory at each call. Valid until the next ``bind``."""
        lib, writes = self._lib, []
        for name, array in feed.items():
            if name in share:
                writes.append((self._sharer(name), array))
                continue
            tensor = self._tensor(name)
            _check(lib, lib.ov_tensor_set_shape(tensor, _shape(array.shape)), f"shaping input {name}")
            view = self._view(tensor, array.dtype, array.shape, f"input {name}")
            view[...] = 0  # a writer whose copy missed the request's memory would leave the zeros' outputs: the runner's check sees it
            writes.append((functools.partial(np.copyto, view), array))
        return writes

    def run_call(self) -> Callable[[], None]:
        """The request's ``infer``: one ctypes call, raising on a failed status."""
        infer, request, check, lib = self._lib.ov_infer_request_infer, self._request, _check, self._lib

        def run() -> None:
            status = infer(request)
            if status:
                check(lib, status, "infer")

        return run

    def output_bytes(self, index: int) -> bytes:
        """Output ``index`` as the last call left it, raw: for checking it against the Python binding's."""
        lib, handle = self._lib, _P()
        _check(lib, lib.ov_infer_request_get_output_tensor_by_index(self._request, index, ctypes.byref(handle)), f"output {index}")
        try:
            address, size = self._memory(handle.value, f"output {index}")
            return ctypes.string_at(address, size) if size else b""
        finally:
            lib.ov_tensor_free(handle)

    def _memory(self, tensor: int, what: str) -> tuple[int, int]:
        """A tensor's address and size in bytes."""
        lib, size, data = self._lib, ctypes.c_size_t(), _P()
        _check(lib, lib.ov_tensor_get_byte_size(tensor, ctypes.byref(size)), f"{what} size")
        _check(lib, lib.ov_tensor_data(tensor, ctypes.byref(data)), f"{what} data")
        return data.value or 0, size.value

    def _view(self, tensor: int, dtype: np.dtype, shape: tuple[int, ...], what: str) -> np.ndarray:
        address, size = self._memory(tensor, what)
        wanted = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        if size != wanted or (wanted and not address):
            raise NativeError(f"OpenVINO C API, {what}: {size} bytes where {dtype} {shape} needs {wanted}")
        raw = (ctypes.c_ubyte * wanted).from_address(address) if wanted else bytearray()
        return np.frombuffer(raw, dtype=dtype).reshape(shape)

    def _tensor(self, name: str) -> int:
        """The request's own tensor for input ``name`` (one handle per name, freed with the request)."""
        if name not in self._tensors:
            handle = _P()
            _check(self._lib, self._lib.ov_infer_request_get_tensor(self._request, name.encode(), ctypes.byref(handle)), f"input {name}")
            self._handles.append(("ov_tensor_free", handle.value))
            self._tensors[name] = handle.value
        return self._tensors[name]

    def _sharer(self, name: str) -> Callable[[np.ndarray], None]:
        # the element type read from the request's own tensor: ov_element_type_e's numbering changes between releases
        element = ctypes.c_int()
        _check(self._lib, self._lib.ov_tensor_get_element_type(self._tensor(name), ctypes.byref(element)), f"input {name} type")
        lib, request, encoded, held = self._lib, self._request, name.encode(), self._held
        create, set_tensor, free = lib.ov_tensor_create_from_host_ptr, lib.ov_infer_request_set_tensor, lib.ov_tensor_free

        def write(array: np.ndarray) -> None:
            held[name] = array = np.ascontiguousarray(array)  # the request reads it at the next infer: kept alive until then
            handle = _P()
            _check(lib, create(element.value, _shape(array.shape), array.ctypes.data, ctypes.byref(handle)), f"input {name}")
            try:
                _check(lib, set_tensor(request, encoded, handle), f"setting input {name}")
            finally:
                free(handle)  # the request keeps its own reference

        return write
