r"""Save and load layer configs together with trained parameters, in one ``.npz`` file.

:func:`save` writes a NumPy ``.npz`` archive holding

* ``"npvi_header"``: UTF-8 JSON (as a ``uint8`` array) with ``format`` (``"npvi"``),
  ``format_version``, the ``npvi_version`` that wrote it, the layers as
  ``{"class_name": ..., "config": layer.get_config()}`` and, per parameter, its name,
  dtype, shape and the archive entry that holds it;
* ``"param_0"``, ``"param_1"``, ...: the parameter arrays, bit for bit (dtypes NumPy
  cannot store, such as ``bfloat16``, are stored as unsigned integers of the same
  width and viewed back on load).

Version 2 names every parameter ``"<site>.<part>"``. Version 1 files, written while
:class:`~npvi.MeanFieldGuide` handed its non-layer latents to NumPyro's ``AutoNormal``,
name those ``"<site>_auto_loc"`` and ``"<site>_auto_scale"`` (the scale itself);
:func:`load` renames them to ``"<site>.loc"`` and ``"<site>.untransformed_scale"``
(:math:`u` with :math:`\operatorname{softplus}(u) + \varepsilon` = the saved scale), so the
loaded posterior is the saved one.

The file is written atomically: to a temporary file in the same directory, flushed
and ``fsync``-ed, then moved over ``path`` with ``os.replace``. A crash mid-save
leaves the previous file intact. :func:`load` reads with ``allow_pickle=False`` and
refuses a file of an unknown or newer ``format_version`` with a ``ValueError``.

>>> import os, tempfile, jax.numpy as jnp
>>> import npvi
>>> path = os.path.join(tempfile.mkdtemp(), "model.npz")
>>> save(path, [npvi.DenseFlipout(2, name="l1")], {"l1.bias": jnp.zeros(2)})
>>> layers, params = load(path)
>>> layers, sorted(params)
([DenseFlipout(2, name='l1')], ['l1.bias'])
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from npvi.layers import LinearVariational
from npvi.serialization import deserialize_layer, serialize_layer

FORMAT = "npvi"
#: The version :func:`save` writes; :func:`load` reads versions 1 to this one.
FORMAT_VERSION = 2
_AUTO_LOC, _AUTO_SCALE = "_auto_loc", "_auto_scale"  # version 1's names of AutoNormal's parameters
_HEADER = "npvi_header"


class Checkpoint(NamedTuple):
    """What :func:`load` returns: the rebuilt layers (in saved order) and the parameters."""

    layers: list[LinearVariational]
    params: dict[str, jax.Array]


def _serialized_layers(layers: Any) -> list[dict[str, Any]]:
    if isinstance(layers, (LinearVariational, dict)):
        layers = [layers]
    if not isinstance(layers, Iterable):
        raise TypeError(f"save: layers must be an npvi layer or a list of them, got {type(layers).__name__}")
    out = []
    for layer in layers:
        if isinstance(layer, LinearVariational):
            out.append(serialize_layer(layer))
        elif isinstance(layer, dict):
            deserialize_layer(layer)  # check it describes a layer before writing it
            out.append(layer)
        else:
            raise TypeError(
                "save: each layer must be an npvi layer or npvi.serialization.serialize_layer(layer), "
                f"got {type(layer).__name__}"
            )
    names = [entry["config"]["name"] for entry in out]
    duplicated = sorted({n for n in names if names.count(n) > 1})
    if duplicated:
        raise ValueError(f"save: layer names must be unique, but {duplicated} appear more than once")
    return out


def _storable(name: str, value: Any) -> tuple[np.ndarray, dict[str, Any]]:
    if isinstance(value, jax.core.Tracer):
        raise ValueError(f"save: parameter {name!r} is a traced array; save outside jit")
    array = np.asarray(value)
    if array.dtype.kind not in "biufc":
        if array.dtype.itemsize not in (1, 2, 4, 8) or array.dtype.kind == "O":
            raise TypeError(f"save: parameter {name!r} has dtype {array.dtype}, which npvi cannot store")
        stored = array.view(f"u{array.dtype.itemsize}")
    else:
        stored = array
    return stored, {"name": name, "dtype": array.dtype.name, "shape": list(array.shape)}


def _write_archive(file, arrays: dict[str, np.ndarray]) -> None:
    """Write the ``.npz`` archive into an open binary file."""
    np.savez(file, **arrays)


def save(path: str | os.PathLike, layers: Any, params: Mapping[str, Any]) -> None:
    """Write ``layers`` (npvi layers or serialized layers) and ``params`` to ``path`` atomically.

    ``params`` is a flat ``{name: array}`` dict, e.g. ``svi.get_params(state)``;
    every array is stored bit for bit. ``path`` is used as given (``.npz`` is the
    natural suffix). See the module docstring for the format.
    """
    if not isinstance(params, Mapping) or not all(isinstance(k, str) for k in params):
        raise TypeError(f"save: params must be a dict of name -> array, got {type(params).__name__}")
    entries, arrays = [], {}
    for i, (name, value) in enumerate(params.items()):
        key = f"param_{i}"
        arrays[key], entry = _storable(name, value)
        entries.append({**entry, "key": key})
    header = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "npvi_version": _npvi_version(),
        "layers": _serialized_layers(layers),
        "params": entries,
    }
    text = json.dumps(header, allow_nan=False, sort_keys=True)
    arrays[_HEADER] = np.frombuffer(text.encode("utf-8"), dtype=np.uint8)

    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{os.path.basename(path)}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as file:
            if hasattr(os, "fchmod"):  # mkstemp creates 0600; give the file the usual umask-based mode
                umask = os.umask(0)
                os.umask(umask)
                os.fchmod(file.fileno(), 0o666 & ~umask)
            _write_archive(file, arrays)
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    _fsync_directory(directory)


def _fsync_directory(directory: str) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # e.g. Windows cannot open a directory
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _npvi_version() -> str:
    from npvi import __version__

    return __version__


def load(path: str | os.PathLike) -> Checkpoint:
    """Read a file written by :func:`save`: ``(layers, params)`` as a :class:`Checkpoint`.

    ``params`` holds JAX arrays with the saved dtypes, shapes and bits. A file that is
    not an npvi file, or has an unknown or newer ``format_version``, raises ``ValueError``.
    """
    with np.load(os.fspath(path), allow_pickle=False) as archive:
        if _HEADER not in archive.files:
            raise ValueError(f"load: {os.fspath(path)!r} is not an npvi file (no {_HEADER!r} entry)")
        try:
            header = json.loads(archive[_HEADER].tobytes().decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            raise ValueError(f"load: {os.fspath(path)!r} has an unreadable header: {error}") from None
        if not isinstance(header, dict) or header.get("format") != FORMAT:
            raise ValueError(f"load: {os.fspath(path)!r} is not an npvi file (format {header.get('format')!r})")
        version = header.get("format_version")
        if isinstance(version, bool) or not isinstance(version, int) or not 1 <= version <= FORMAT_VERSION:
            raise ValueError(
                f"load: {os.fspath(path)!r} has format_version {version!r}, but this npvi "
                f"({_npvi_version()}) reads versions 1 to {FORMAT_VERSION}; it was written by npvi "
                f"{header.get('npvi_version')!r}, so upgrade npvi to read it"
            )
        params = {}
        for entry in header["params"]:
            stored = archive[entry["key"]]
            dtype = jnp.dtype(entry["dtype"])
            array = stored if stored.dtype == dtype else stored.view(dtype)
            if list(array.shape) != entry["shape"]:
                raise ValueError(
                    f"load: parameter {entry['name']!r} has shape {array.shape}, the header says {entry['shape']}"
                )
            # A 64-bit array stays NumPy when JAX runs in 32-bit mode, rather than losing bits.
            keep_numpy = jax.dtypes.canonicalize_dtype(dtype) != dtype
            params[entry["name"]] = np.array(array) if keep_numpy else jnp.asarray(array)
    layers = [deserialize_layer(entry) for entry in header["layers"]]
    if version == 1:
        params = _renamed_from_version_1(params)
    return Checkpoint(layers, params)


def _renamed_from_version_1(params: dict[str, Any]) -> dict[str, Any]:
    """Version 1's AutoNormal names ``"<site>_auto_loc"``, ``"<site>_auto_scale"``, renamed as version 2 names them."""
    renamed = {}
    for name, value in params.items():
        if name.endswith(_AUTO_LOC):
            renamed[name[: -len(_AUTO_LOC)] + ".loc"] = value
        elif name.endswith(_AUTO_SCALE):
            scale = np.asarray(value, dtype=np.float64) - np.finfo(np.asarray(value).dtype).eps
            untransformed = np.log(np.expm1(np.maximum(scale, np.finfo(np.float64).tiny)))
            renamed[name[: -len(_AUTO_SCALE)] + ".untransformed_scale"] = jnp.asarray(
                untransformed.astype(np.asarray(value).dtype)
            )
        else:
            renamed[name] = value
    return renamed
