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


# --------------------------------------------------------------------------------------------
# Traced programs, kept too: the XLA cache skips compiling, but a fresh process would still trace
# N4 and the networks in Python (≈ 1.5 s on a 2-core CPU). `cached_call` stores the traced program
# (`jax.export`, StableHLO) next to it, keyed by the name, the argument shapes, JAX's version, the
# devices' platform and kind, and a hash of mri_jax's own source, so a changed program is never served from an old file.
# --------------------------------------------------------------------------------------------
_calls: dict = {}
_source_hash: str | None = None


def _mri_jax_source_hash() -> str:
  global _source_hash
  if _source_hash is None:
    import hashlib

    h = hashlib.sha256()
    root = Path(__file__).resolve().parent
    for f in sorted(root.rglob("*.py")):
      h.update(str(f.relative_to(root)).encode())
      h.update(f.read_bytes())
    _source_hash = h.hexdigest()[:16]
  return _source_hash


def _platform() -> tuple:
  """JAX's version and the devices' platform and kind: a program traced for one machine's backend
  is never served to another (a home folder shared by CPU and GPU nodes)."""
  import jax

  device = jax.devices()[0]
  return (jax.__version__, device.platform, device.device_kind, jax.device_count())


def cached_call(name: str, fn, *args):
  """`jax.jit(fn)(*args)`; with the cache on, the traced program is also kept on disk (see above).

  `fn` takes arrays (a flat list or tuple of them is fine) and returns a pytree of arrays; every
  static choice it closes over must be in `name`, which with the arguments' shapes and dtypes keys
  the program.
  """
  import jax

  flat, tree = jax.tree.flatten(args)
  sig = (name, str(tree), tuple((tuple(a.shape), str(a.dtype)) for a in flat))
  call = _calls.get(sig)
  if call is None:
    call = _load_or_export(name, sig, fn, args) if _enabled is not None else jax.jit(fn)
    _calls[sig] = call
  return call(*args)


def _load_or_export(name: str, sig, fn, args):
  import jax
  from jax import export

  path = _entry("programs", name, sig, ".bin")
  exported = None
  if path.is_file():
    try:
      exported = export.deserialize(bytearray(path.read_bytes()))
    except Exception:  # a torn or foreign file: trace again and replace it
      exported = None
  if exported is None:
    try:
      exported = export.export(jax.jit(fn))(*args)
      payload = bytes(exported.serialize())
    except Exception:  # a program jax.export cannot serialise: plain jit (the XLA cache still applies)
      return jax.jit(fn)
    _store(path, payload)
  return jax.jit(exported.call)


def cached_value(name: str, key: str, build):
  """`build()`, kept on disk (pickled) under the cache folder keyed by `name`, `key`, JAX's version
  and mri_jax's source hash; just `build()` when the cache is off. For static, picklable values that
  are slow to make (the networks' abstract graph definitions: `Restorer.from_config`). The cache
  folder is trusted (as JAX's own cache is): do not share it with users you do not trust."""
  if _enabled is None:
    return build()
  import pickle

  path = _entry("values", name, key, ".pkl")
  if path.is_file():
    try:
      return pickle.loads(path.read_bytes())
    except Exception:  # a torn or foreign file: build again and replace it
      pass
  value = build()
  try:
    payload = pickle.dumps(value)
  except Exception:  # unpicklable: this process still has the value
    return value
  _store(path, payload)
  return value


def _entry(kind: str, name: str, key, suffix: str) -> Path:
  """The file of one cached entry: `kind`/<name>-<hash of the key, the platform and mri_jax's source>."""
  import hashlib

  digest = hashlib.sha256(repr((key, _platform(), _mri_jax_source_hash())).encode()).hexdigest()[:32]
  return Path(_enabled) / kind / f"{''.join(c if c.isalnum() else '_' for c in name)[:40]}-{digest}{suffix}"


def _store(path: Path, payload: bytes) -> None:
  """Writes an entry atomically; a read-only cache is not an error (this process has the value)."""
  from mri_jax.io.nifti import atomic_write_bytes

  try:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, payload)
  except OSError:
    pass
