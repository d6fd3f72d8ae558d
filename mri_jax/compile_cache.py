"""JAX's persistent compilation cache for mri-jax: compile once per machine, not once per call.

Without it every `mri-jax restore` compiles N4 and the restorer again (tens of seconds on a
2-core CPU); with it, later calls load the compiled programs from disk.

Where the cache lives (first that applies):
  1. the `path` given to `enable` (the CLI's `--cache-dir`);
  2. the environment variable `MRI_JAX_CACHE_DIR`;
  3. `$XDG_CACHE_HOME/mri_jax/xla`, else `~/.cache/mri_jax/xla`.
`off` (or `none`, or an empty value) as the path or in `MRI_JAX_CACHE_DIR` disables it.

Two processes may share the folder: the cache is size-bounded (`MAX_BYTES`, least recently used
entries evicted), which makes JAX take a file lock (`filelock`) around every read and write.
Entries are keyed by the program, the JAX/XLA version and the machine's devices, so a stale entry
is never used; deleting the folder is always safe. As JAX's documentation says, the cache is
trusted: do not point it at a folder that other users can write to.
"""

from __future__ import annotations

import os
from pathlib import Path

from mri_jax.errors import UserInputError

ENV = "MRI_JAX_CACHE_DIR"
OFF = ("off", "none", "")
MAX_BYTES = 2 * 1024**3

_enabled: str | None = None


def default_dir() -> Path:
  """The cache folder when neither a path nor `MRI_JAX_CACHE_DIR` is given."""
  base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
  return Path(base) / "mri_jax" / "xla"


def resolve(path: str | os.PathLike | None = None) -> Path | None:
  """The folder `enable(path)` would use (None: the cache is off)."""
  value = os.environ.get(ENV) if path is None else os.fspath(path)
  if value is None:
    return default_dir()
  if value.strip().lower() in OFF:
    return None
  return Path(value).expanduser()


def enable(path: str | os.PathLike | None = None) -> Path | None:
  """Turns JAX's persistent compilation cache on in `path` (see the module docstring); returns the
  folder, or None when it is off. Call it before the first compilation; calling it again in the same
  process keeps the first folder.

  Raises:
    UserInputError: the folder cannot be created or written.
  """
  global _enabled
  folder = resolve(path)
  if folder is None:
    return None
  if _enabled is not None:
    return Path(_enabled)
  try:
    folder.mkdir(parents=True, exist_ok=True)
    probe = folder / f".write-test-{os.getpid()}"
    probe.write_bytes(b"")
    probe.unlink()
  except OSError as err:
    raise UserInputError(f"compilation cache folder '{folder}' is not writable ({err.strerror or err}); "
                         f"set {ENV} to another folder, or to 'off'") from None
  import jax

  jax.config.update("jax_compilation_cache_dir", str(folder))
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)  # N4's small programs too
  jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
  jax.config.update("jax_compilation_cache_max_size", MAX_BYTES)  # bounded ⇒ file-locked reads and writes
  _enabled = str(folder)
  return folder
