r"""Save and load layer configs together with trained parameters, in one ``.npz`` file.

:func:`save` writes a NumPy ``.npz`` archive holding

* ``"npvi_header"``: UTF-8 JSON (as a ``uint8`` array) with ``format`` (``"npvi"``),
  ``format_version``, the ``npvi_version`` that wrote it, the layers as
  ``{"class_name": ..., "config": layer.get_config()}`` and, per parameter, its name,
  dtype, shape and the archive entry that holds it;
* ``"param_0"``, ``"param_1"``, ...: the parameter arrays, bit for bit (dtypes NumPy
  cannot store, such as ``bfloat16``, are stored as unsigned integers of the same
  width and viewed back on load);
* with ``state=`` (version 3), the whole :class:`~numpyro.infer.svi.SVIState` as well:
  ``"state_0"``, ``"state_1"``, ... hold its arrays (the optimizer's step count and
  moments, the SVI key) in the order of :func:`jax.tree_util.tree_flatten`, and the
  header's ``state`` lists each one's path in the tree (``.optim_state[1][0].mu['l1.bias']``),
  dtype and shape, plus the ``epoch`` it was saved after. :func:`load_state` puts them back
  into a state of the same structure (``like``: the state of a fresh ``svi.init`` or
  :meth:`npvi.Trainer.init`), so that training resumes where it stopped, bit for bit;
* checkpoints written by :func:`npvi.fit` (:class:`npvi.Checkpoints`) also hold the run's
  losses, history and early-stopping progress (the header's ``training``, entries
  ``"training/<name>"``).

Version 3 adds the state and the training progress. Version 2 names every parameter
``"<site>.<part>"``. Version 1 files, written while
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
from numpyro.infer.svi import SVIState

from npvi.layers import LinearVariational
from npvi.serialization import deserialize_layer, serialize_layer

FORMAT = "npvi"
#: The version :func:`save` writes; :func:`load` reads versions 1 to this one.
FORMAT_VERSION = 3
_AUTO_LOC, _AUTO_SCALE = "_auto_loc", "_auto_scale"  # version 1's names of AutoNormal's parameters
_HEADER = "npvi_header"
_TRAINING = "training"
#: The suffix of the temporary file a write goes through before it is renamed into place.
TEMPORARY_SUFFIX = ".tmp"


class Checkpoint(NamedTuple):
    """What :func:`load` returns: the rebuilt layers (in saved order) and the parameters."""

    layers: list[LinearVariational]
    params: dict[str, jax.Array]


class SavedState(NamedTuple):
    """What :func:`load_state` returns: the SVI state, and the epoch it was saved after (None if not given)."""

    state: SVIState
    epoch: int | None


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


def _host_value(what: str, value: Any) -> Any:
    """``value`` readable on this host: a global array replicated across processes gives its local copy."""
    if isinstance(value, jax.Array) and not value.is_fully_addressable:
        if not value.is_fully_replicated:
            raise ValueError(
                f"save: {what} is split across processes; npvi saves replicated states (npvi.fit's are)"
            )
        return value.addressable_data(0)
    return value


def _state_entries(state: Any, prefix: str = "state") -> tuple[list[dict[str, Any]], dict[str, np.ndarray]]:
    """The header entries and archive arrays (``"<prefix>_<i>"``) of every leaf of ``state``, in tree order."""
    if not isinstance(state, SVIState):
        raise TypeError(f"save: state must be an SVIState (result.state, svi.init(...)), got {type(state).__name__}")
    entries, arrays = [], {}
    for i, (path, leaf) in enumerate(jax.tree_util.tree_flatten_with_path(state)[0]):
        where = jax.tree_util.keystr(path)
        leaf = _host_value(f"the state's {where}", leaf)
        is_key = jnp.issubdtype(jnp.result_type(leaf), jax.dtypes.prng_key)
        key = f"{prefix}_{i}"
        arrays[key], entry = _storable(where, jax.random.key_data(leaf) if is_key else leaf)
        entries.append({**entry, "key": key, "path": where, "prng_key": bool(is_key)})
    return entries, arrays


def _write_archive(file, arrays: dict[str, np.ndarray]) -> None:
    """Write the ``.npz`` archive into an open binary file."""
    np.savez(file, **arrays)


def save(
    path: str | os.PathLike,
    layers: Any,
    params: Mapping[str, Any],
    *,
    state: SVIState | None = None,
    epoch: int | None = None,
) -> None:
    """Write ``layers`` (npvi layers or serialized layers) and ``params`` to ``path`` atomically.

    ``params`` is a flat ``{name: array}`` dict, e.g. ``svi.get_params(state)``;
    every array is stored bit for bit. ``state`` (an :class:`~numpyro.infer.svi.SVIState`,
    e.g. ``result.state``) stores the optimizer's state, its step count and the SVI key
    too, and ``epoch`` the number of epochs it has trained, so that :func:`load_state`
    and ``fit(..., init_state=state, initial_epoch=epoch)`` resume the run bit for bit.
    ``path`` is used as given (``.npz`` is the natural suffix). See the module docstring
    for the format.
    """
    write(path, layers, params, state=state, epoch=epoch)


def write(
    path: str | os.PathLike,
    layers: Any,
    params: Mapping[str, Any],
    *,
    state: SVIState | None = None,
    epoch: int | None = None,
    training: dict[str, Any] | None = None,
    training_arrays: Mapping[str, Any] | None = None,
    extra_states: Mapping[str, SVIState] | None = None,
) -> None:
    """:func:`save`, plus a run's progress: ``training`` (JSON), ``training_arrays`` (``"training/<name>"``)
    and ``extra_states`` (other states by name, e.g. the best epoch's; read with ``load_state(..., name=...)``).
    """
    if not isinstance(params, Mapping) or not all(isinstance(k, str) for k in params):
        raise TypeError(f"save: params must be a dict of name -> array, got {type(params).__name__}")
    if epoch is not None and (isinstance(epoch, bool) or not isinstance(epoch, int | np.integer) or epoch < 0):
        raise ValueError(f"save: epoch must be a non-negative int, got {epoch!r}")
    entries, arrays = [], {}
    for i, (name, value) in enumerate(params.items()):
        key = f"param_{i}"
        arrays[key], entry = _storable(name, _host_value(f"parameter {name!r}", value))
        entries.append({**entry, "key": key})
    header = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "npvi_version": _npvi_version(),
        "layers": _serialized_layers(layers),
        "params": entries,
    }
    if state is not None:
        state_entries, state_arrays = _state_entries(state)
        header["state"] = {"leaves": state_entries, "epoch": None if epoch is None else int(epoch)}
        arrays.update(state_arrays)
    for name, extra in (extra_states or {}).items():
        extra_entries, extra_arrays = _state_entries(extra, prefix=f"{name}_state")
        header.setdefault("extra_states", {})[name] = {"leaves": extra_entries}
        arrays.update(extra_arrays)
    if training is not None:
        header["training"] = training
        for name, value in (training_arrays or {}).items():
            arrays[f"{_TRAINING}/{name}"] = np.asarray(value)
    text = json.dumps(header, allow_nan=False, sort_keys=True)
    arrays[_HEADER] = np.frombuffer(text.encode("utf-8"), dtype=np.uint8)

    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{os.path.basename(path)}.", suffix=TEMPORARY_SUFFIX)
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


def _read_header(path: str | os.PathLike, archive: Any) -> dict[str, Any]:
    """The checked JSON header of an open archive."""
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
    return header


def _read_array(archive: Any, entry: dict[str, Any]) -> np.ndarray:
    """One stored array with its saved dtype (viewed back from unsigned integers where NumPy could not store it)."""
    stored = archive[entry["key"]]
    dtype = jnp.dtype(entry["dtype"])
    array = stored if stored.dtype == dtype else stored.view(dtype)
    if list(array.shape) != entry["shape"]:
        what = entry.get("path", entry.get("name"))
        raise ValueError(f"load: {what!r} has shape {array.shape}, the header says {entry['shape']}")
    return np.array(array)


def _as_jax(array: np.ndarray) -> Any:
    # A 64-bit array stays NumPy when JAX runs in 32-bit mode, rather than losing bits.
    return array if jax.dtypes.canonicalize_dtype(array.dtype) != array.dtype else jnp.asarray(array)


def load(path: str | os.PathLike) -> Checkpoint:
    """Read a file written by :func:`save`: ``(layers, params)`` as a :class:`Checkpoint`.

    ``params`` holds JAX arrays with the saved dtypes, shapes and bits. A file that is
    not an npvi file, or has an unknown or newer ``format_version``, raises ``ValueError``.
    A saved state is read by :func:`load_state`.
    """
    with np.load(os.fspath(path), allow_pickle=False) as archive:
        header = _read_header(path, archive)
        params = {entry["name"]: _as_jax(_read_array(archive, entry)) for entry in header["params"]}
    layers = [deserialize_layer(entry) for entry in header["layers"]]
    if header["format_version"] == 1:
        params = _renamed_from_version_1(params)
    return Checkpoint(layers, params)


def load_state(path: str | os.PathLike, like: Any, *, name: str | None = None) -> SavedState:
    """The :class:`~numpyro.infer.svi.SVIState` saved in ``path`` (``save(..., state=...)``), and its epoch.

    ``like`` is a state of the same structure, e.g. ``trainer.init(key, x, y)`` or
    ``svi.init(...)`` of the same model, guide and optimizer (only its structure, shapes,
    dtypes and key type are used; ``jax.eval_shape(svi.init, ...)`` will do). The arrays come
    back bit for bit. A file without a state, or a state of another structure (another
    optimizer, another model), raises ``ValueError`` naming the first difference.
    ``name`` reads another state the file holds instead (a checkpoint's ``"best"``).

    >>> import os, tempfile, jax, jax.numpy as jnp, optax, numpyro, numpyro.distributions as dist
    >>> from numpyro.infer import SVI
    >>> import npvi
    >>> def model(x, y=None):
    ...     mu = npvi.DenseFlipout(1, name="out")(x)[..., 0]
    ...     with numpyro.plate("data", x.shape[0]):
    ...         numpyro.sample("y", dist.Normal(mu, 1.0), obs=y)
    >>> svi = SVI(model, npvi.MeanFieldGuide(model), optax.adam(1e-2), npvi.ELBO())
    >>> state = svi.init(jax.random.PRNGKey(0), jnp.ones((4, 2)), jnp.zeros(4))
    >>> path = os.path.join(tempfile.mkdtemp(), "run.npz")
    >>> save(path, [], svi.get_params(state), state=state, epoch=7)
    >>> saved = load_state(path, like=state)
    >>> saved.epoch, jax.tree.all(jax.tree.map(lambda a, b: bool((a == b).all()), saved.state, state))
    (7, True)
    """
    like_leaves, treedef = jax.tree_util.tree_flatten_with_path(like)
    with np.load(os.fspath(path), allow_pickle=False) as archive:
        header = _read_header(path, archive)
        saved = header.get("state") if name is None else header.get("extra_states", {}).get(name)
        if saved is None:
            what = "no state" if name is None else f"no state named {name!r}"
            raise ValueError(
                f"load_state: {os.fspath(path)!r} holds {what}; save it with npvi.save(path, layers, params, "
                "state=result.state, epoch=...)"
            )
        entries = saved["leaves"]
        paths = [jax.tree_util.keystr(p) for p, _ in like_leaves]
        saved_paths = [entry["path"] for entry in entries]
        if paths != saved_paths:
            first = next(
                (i for i, (a, b) in enumerate(zip(paths, saved_paths, strict=False)) if a != b),
                min(len(paths), len(saved_paths)),
            )
            here = paths[first] if first < len(paths) else "(nothing)"
            there = saved_paths[first] if first < len(saved_paths) else "(nothing)"
            raise ValueError(
                f"load_state: the state in {os.fspath(path)!r} has {len(saved_paths)} arrays, the state to fill has "
                f"{len(paths)}, and they differ from array {first} on: the file has {there}, this state {here}. "
                "Build `like` with the same model, guide and optimizer as the saved run"
            )
        leaves = []
        for entry, (where, leaf) in zip(entries, like_leaves, strict=True):
            array = _read_array(archive, entry)
            if entry["prng_key"]:
                leaves.append(jax.random.wrap_key_data(array, impl=jax.random.key_impl(leaf)))
                continue
            expected = (tuple(jnp.shape(leaf)), jnp.result_type(leaf))
            if (array.shape, array.dtype) != expected:
                raise ValueError(
                    f"load_state: {jax.tree_util.keystr(where)} is {array.dtype}{list(array.shape)} in "
                    f"{os.fspath(path)!r} but {expected[1]}{list(expected[0])} in the state to fill: the saved run "
                    "had another model, guide or optimizer"
                )
            leaves.append(_as_jax(array))
    epoch = header["state"]["epoch"] if "state" in header else None
    return SavedState(jax.tree_util.tree_unflatten(treedef, leaves), epoch)


def state_names(path: str | os.PathLike) -> list[str]:
    """The names of the extra states a file holds (``write(..., extra_states=...)``)."""
    with np.load(os.fspath(path), allow_pickle=False) as archive:
        return sorted(_read_header(path, archive).get("extra_states", {}))


def read_training(path: str | os.PathLike) -> tuple[dict[str, Any] | None, dict[str, np.ndarray]]:
    """A checkpoint's training progress: the header's ``training`` (None if absent) and its arrays by name."""
    with np.load(os.fspath(path), allow_pickle=False) as archive:
        header = _read_header(path, archive)
        prefix = f"{_TRAINING}/"
        arrays = {name[len(prefix):]: np.array(archive[name]) for name in archive.files if name.startswith(prefix)}
    return header.get("training"), arrays


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
