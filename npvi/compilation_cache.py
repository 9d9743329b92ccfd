r"""JAX's persistent compilation cache, for ``npvi demo`` and for your own scripts.

Most of a small job's first run is XLA compiling its programs: the epoch of
:func:`npvi.fit`, the draws of :class:`npvi.Predictive` and of
:func:`npvi.to_inference_data`, ``svi.init``. JAX can keep every compiled program
on disk, keyed by the program, the JAX and XLA versions, the device and the
compiler options, and load it in a later process instead of compiling it again.
:func:`enable_compilation_cache` turns that on in one call; ``npvi demo`` calls it
(``--no-cache`` leaves it off).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from pathlib import Path

#: Environment variable that sets the directory of npvi's compilation cache.
CACHE_ENV = "NPVI_CACHE_DIR"


def default_cache_dir(environ: Mapping[str, str] = os.environ, platform: str = sys.platform) -> Path:
    """Where npvi keeps JAX's compilation cache: ``$NPVI_CACHE_DIR``, else the user's cache directory.

    That is ``$XDG_CACHE_HOME/npvi/jax`` (``~/.cache/npvi/jax``) on Linux,
    ``~/Library/Caches/npvi/jax`` on macOS and ``%LOCALAPPDATA%\\npvi\\cache\\jax`` on Windows.

    >>> default_cache_dir({"NPVI_CACHE_DIR": "/tmp/npvi-cache"}).as_posix()
    '/tmp/npvi-cache'
    >>> default_cache_dir({"XDG_CACHE_HOME": "/home/me/.cache"}, "linux").as_posix()
    '/home/me/.cache/npvi/jax'
    """
    if environ.get(CACHE_ENV):
        return Path(environ[CACHE_ENV])
    home = Path(environ.get("HOME") or Path.home())
    if platform == "darwin":
        return home / "Library" / "Caches" / "npvi" / "jax"
    if platform.startswith("win"):
        return Path(environ.get("LOCALAPPDATA") or home / "AppData" / "Local") / "npvi" / "cache" / "jax"
    return Path(environ.get("XDG_CACHE_HOME") or home / ".cache") / "npvi" / "jax"


def enable_compilation_cache(directory: str | os.PathLike[str] | None = None) -> Path:
    """Turn on JAX's persistent compilation cache in ``directory`` and return the directory.

    ``None`` means :func:`default_cache_dir` (``$NPVI_CACHE_DIR``, else the user's cache
    directory). The directory is created if it does not exist. From the next compile on, every
    program JAX compiles in this process is written there, and a later process that compiles the
    same program (same computation, shapes, JAX and XLA versions, device and compiler options)
    loads it instead of compiling it. It changes no number: a program from the cache is the
    program the compiler made.

    It sets JAX's public options through ``jax.config.update``, nothing else:

    * ``jax_compilation_cache_dir``: the directory; ``jax_enable_compilation_cache``: on;
    * ``jax_persistent_cache_min_compile_time_secs = 0``: JAX's default, 1 s, keeps only programs
      that took a second or more to compile, and a small job's few dozen programs each take
      less (together most of its run), so npvi keeps them all;
    * ``jax_persistent_cache_min_entry_size_bytes = -1``: no size threshold either (JAX's
      ``0`` lets JAX pick a minimum for the file system, today also none).

    Call it at the start of a script. JAX opens the directory at its next compile and keeps it
    for the process: calling again with another directory after something has compiled does not
    move the cache. The cache grows by each new program (a few kB to a few hundred kB each for a
    small network's); delete the directory to empty it.

    A script of your own, which compiles its programs in its first run and loads them from the
    second on (the example is not run by the doctests, since it would turn the cache on for the
    whole test process)::

        import npvi

        npvi.enable_compilation_cache()  # or a directory of your own: ("~/.cache/my-project/jax")
        ...                              # npvi.fit, npvi.Predictive, npvi.to_inference_data as usual
    """
    import jax

    path = default_cache_dir() if directory is None else Path(directory)
    path = path.expanduser()
    path.mkdir(parents=True, exist_ok=True)
    jax.config.update("jax_enable_compilation_cache", True)
    jax.config.update("jax_compilation_cache_dir", str(path))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)
    return path
