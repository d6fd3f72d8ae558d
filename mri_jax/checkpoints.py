"""Every way weights are saved and loaded: training checkpoints (orbax) and exported weights (npz).

Both key arrays by *name* — the path of each leaf in its pytree ("unet/down/0/c1/kernel/value",
"opt_unet/1/0/mu/...") — never by position, so adding a parameter adds a key and leaves the
others where they were.

- Training checkpoints: `Checkpointer` over `orbax.checkpoint.CheckpointManager` saves a named
  state (a nested dict made by `named`) plus, optionally, the grain iterator state; `restore`
  reads it back into the structure of a template (shapes and dtypes only: `abstract`).
- Exported weights (`export-weights`, the shipped `mri_jax/weights/default/`): `config.json` +
  `model.npz` of float32 arrays, keys 'ae' / 'ema_unet' / 'fid' + the leaf's `jax.tree_util.keystr`.
  `load_weights` checks the file, the keys, the shapes and that every weight is finite.
Used by the trainer (`mri_jax.train`) and by inference (`mri_jax.restore`); imports neither.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import zipfile
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from mri_jax.errors import UserInputError
from mri_jax.io.nifti import atomic_write_bytes

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.npz"


# --------------------------------------------------------------------------------------------
# Named pytrees
# --------------------------------------------------------------------------------------------
def _key_name(k) -> str:
  for attr in ("key", "name", "idx"):
    if hasattr(k, attr):
      return str(getattr(k, attr))
  return str(k)


def named(tree) -> dict:
  """A nested dict of `tree`'s leaves keyed by the names along each leaf's path."""
  out: dict = {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
    node = out
    names = [_key_name(k) for k in path] or ["value"]
    for name in names[:-1]:
      node = node.setdefault(name, {})
    node[names[-1]] = leaf
  return out


def from_named(template, nested: dict, what: str = "checkpoint"):
  """`template`'s structure with its leaves looked up by name in `nested` (from `named`)."""
  paths, treedef = jax.tree_util.tree_flatten_with_path(template)
  leaves = []
  for path, like in paths:
    node = nested
    names = [_key_name(k) for k in path] or ["value"]
    for name in names:
      if not isinstance(node, dict) or name not in node:
        raise UserInputError(f"{what} has no entry {'/'.join(names)}: it does not match the model in its config")
      node = node[name]
    shape = getattr(like, "shape", None)
    if shape is not None and tuple(np.shape(node)) != tuple(shape):
      raise UserInputError(f"{what}: weights do not match the model in its config ({'/'.join(names)} has shape "
                           f"{tuple(np.shape(node))}, expected {tuple(shape)})")
    leaves.append(node)
  return jax.tree.unflatten(treedef, leaves)


def abstract(tree):
  """Shapes and dtypes of `tree`'s leaves (a restore target that allocates nothing)."""
  import orbax.checkpoint as ocp

  return jax.tree.map(ocp.utils.to_shape_dtype_struct, tree)


# --------------------------------------------------------------------------------------------
# Training checkpoints
# --------------------------------------------------------------------------------------------
@contextlib.contextmanager
def _orbax_quiet():
  """Keeps orbax's warnings about a damaged step (logged through absl, several per read) off stderr
  while checkpoints are read: a damaged one is reported as one line by the caller."""
  logger = logging.getLogger("absl")
  level = logger.level
  logger.setLevel(logging.ERROR)
  try:
    yield
  finally:
    logger.setLevel(level)


class Checkpointer:
  """Orbax checkpoints of a named train state (+ the data iterator) in `directory`.

  Args:
    directory: the run's `checkpoints/` folder.
    keep: checkpoints kept (None: all).
    every: `save` writes only at multiples of this (or when forced).
  """

  def __init__(self, directory, *, keep: int | None = None, every: int | None = None):
    import orbax.checkpoint as ocp

    self.directory = Path(directory)
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, save_interval_steps=every or 1)
    with _orbax_quiet():  # it reads the steps already there
      self._mgr = ocp.CheckpointManager(self.directory, options=options)

  def latest_step(self) -> int | None:
    with _orbax_quiet():
      step = self._mgr.latest_step()
    return None if step is None else int(step)

  def save(self, step: int, state, data_iterator=None) -> None:
    """Saves `state` (any pytree; stored by leaf names) and the grain iterator's position."""
    import orbax.checkpoint as ocp

    items = {"state": ocp.args.StandardSave(named(state))}
    if data_iterator is not None:
      import grain.python as grain

      items["data"] = grain.PyGrainCheckpointSave(data_iterator)
    self._mgr.save(step, args=ocp.args.Composite(**items), force=True)

  def restore(self, step: int, template, data_iterator=None):
    """The state saved at `step`, in `template`'s structure (its leaves give shapes and dtypes);
    restores the grain iterator's position in place when one is given."""
    import orbax.checkpoint as ocp

    items = {"state": ocp.args.StandardRestore(named(abstract(template)))}
    if data_iterator is not None:
      import grain.python as grain

      items["data"] = grain.PyGrainCheckpointRestore(data_iterator)
    try:
      with _orbax_quiet():
        restored = self._mgr.restore(step, args=ocp.args.Composite(**items))
    except Exception as err:  # orbax raises many types for unreadable / mismatched checkpoints
      raise UserInputError(f"cannot read checkpoint step {step} in '{self.directory}' ({type(err).__name__}: "
                           f"{str(err).splitlines()[0][:200] if str(err) else ''})") from None
    return from_named(template, dict(restored["state"]), f"checkpoint step {step} in '{self.directory}'")

  def restore_named(self, step: int) -> dict:
    """The named state saved at `step` as it was stored (nested dict of arrays; no template)."""
    import orbax.checkpoint as ocp

    try:
      with _orbax_quiet():
        restored = self._mgr.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))
    except Exception as err:
      raise UserInputError(f"cannot read checkpoint step {step} in '{self.directory}' ({type(err).__name__}: "
                           f"{str(err).splitlines()[0][:200] if str(err) else ''})") from None
    return dict(restored["state"])

  def close(self) -> None:
    self._mgr.wait_until_finished()
    self._mgr.close()


def latest_step(workdir) -> int | None:
  """The latest checkpoint step of a training workdir (None: no checkpoint)."""
  steps = all_steps(workdir)
  return steps[-1] if steps else None


def all_steps(workdir) -> list[int]:
  """The checkpoint steps of a training workdir, ascending (empty: none)."""
  ckpt = Path(workdir) / "checkpoints"
  if not ckpt.is_dir():
    return []
  c = Checkpointer(ckpt)
  try:
    with _orbax_quiet():
      return sorted(int(s) for s in c._mgr.all_steps())
  finally:
    c.close()


# --------------------------------------------------------------------------------------------
# Configs and exported weights
# --------------------------------------------------------------------------------------------
def read_config(directory) -> ml_collections.ConfigDict:
  """The `config.json` of a training workdir or an exported-weights folder."""
  path = Path(directory) / CONFIG_FILE
  if not path.is_file():
    raise UserInputError(f"checkpoint '{directory}' has no {CONFIG_FILE} (expected a training workdir or "
                         "a folder written by `mri-jax export-weights`)")
  try:
    data = json.loads(path.read_text())
  except (ValueError, OSError, UnicodeDecodeError) as err:
    raise UserInputError(f"cannot read '{path}': {err}") from None
  if not isinstance(data, dict) or not isinstance(data.get("model"), dict) or not isinstance(data.get("schedule"), dict):
    raise UserInputError(f"'{path}' does not describe a restorer (no 'model' / 'schedule' groups)")
  return ml_collections.ConfigDict(data)


def _flat(tree) -> dict[str, np.ndarray]:
  return {jax.tree_util.keystr(p): np.asarray(x) for p, x in jax.tree_util.tree_flatten_with_path(tree)[0]}


def _unflat(template, flat: dict[str, np.ndarray], what: str):
  paths, treedef = jax.tree_util.tree_flatten_with_path(template)
  leaves = []
  for p, x in paths:
    k = jax.tree_util.keystr(p)
    if k not in flat or flat[k].shape != x.shape:
      raise UserInputError(f"{what}: weights do not match the model in its {CONFIG_FILE} "
                           f"({k} {'missing' if k not in flat else f'has shape {flat[k].shape}, expected {x.shape}'})")
    leaves.append(jnp.asarray(flat[k], x.dtype))
  return jax.tree.unflatten(treedef, leaves)


def check_finite(params, what: str) -> None:
  bad = [jax.tree_util.keystr(p) for p, x in jax.tree_util.tree_flatten_with_path(params)[0]
         if not np.all(np.isfinite(np.asarray(x)))]
  if bad:
    raise UserInputError(f"{what} holds NaN or Inf weights ({bad[0]}{' and more' if len(bad) > 1 else ''}); "
                         "the checkpoint is damaged or its training diverged")


_PREFIXES = {"unet": "ema_unet", "ae": "ae", "fid": "fid"}  # params entry → key prefix in model.npz


def save_weights(out_dir, config: dict, params: dict) -> dict:
  """Writes inference weights {"ae", "unet", "fid"} as `model.npz` (float32; the UNet under
  'ema_unet') and `config` as `config.json`, atomically. Returns what was written."""
  flat = {}
  for name, prefix in _PREFIXES.items():
    if params.get(name) is not None:
      flat.update({prefix + k: v for k, v in _flat(params[name]).items()})
  out = Path(out_dir)
  out.mkdir(parents=True, exist_ok=True)
  buf = io.BytesIO()
  np.savez_compressed(buf, **{k: v.astype(np.float32) for k, v in sorted(flat.items())})
  atomic_write_bytes(out / WEIGHTS_FILE, buf.getvalue())
  atomic_write_bytes(out / CONFIG_FILE, json.dumps(config, indent=2).encode())
  return {"bytes": len(buf.getvalue()), "arrays": len(flat), "path": str(out)}


def load_weights(directory, template: dict) -> dict:
  """{"ae", "unet", "fid"} from `directory/model.npz` in the structure of `template` (abstract params).

  Raises:
    UserInputError: not a weights file (truncated, not an npz, pickled objects), missing or
      mis-shaped arrays, NaN/Inf weights.
  """
  npz = Path(directory) / WEIGHTS_FILE
  not_weights = f"'{npz}' is not a weights file written by `mri-jax export-weights`"
  try:
    z = np.load(npz, allow_pickle=False)
    if not isinstance(z, np.lib.npyio.NpzFile):
      raise UserInputError(f"{not_weights} (a single array, not an archive)")
    with z:
      flat = {k: z[k] for k in z.files}
  except UserInputError:
    raise
  except (OSError, ValueError, EOFError, zipfile.BadZipFile, KeyError) as err:
    raise UserInputError(f"{not_weights} (damaged or another kind of file: {type(err).__name__})") from None
  params = {}
  for name, prefix in _PREFIXES.items():
    if template.get(name) is None:
      params[name] = None
      continue
    part = {k[len(prefix):]: v for k, v in flat.items() if k.startswith(prefix + "[") or k.startswith(prefix + ".")}
    params[name] = _unflat(template[name], part, str(npz))
  check_finite(params, str(npz))
  return params
