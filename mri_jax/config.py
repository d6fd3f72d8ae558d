"""Loading experiment configs (`configs/` in the repository, installed with the package as `configs`).

`load(spec, overrides)` follows ml_collections' `config_flags` conventions — and uses it:
`FILE[:ARG]` calls the file's `get_config(ARG)`, `--config.a.b=value` overrides are typed by the
field they replace (tuples as `8,16` or `(8,16)`, booleans as `true`/`false`), and the result is
locked (a typo in a field name is an error, never a new field). FILE is a path, or a path inside
the installed `configs` package (`default.py`, `ablations/no_n4.py`, `configs/tiny.py`), so
configs work from any folder.
"""

from __future__ import annotations

from pathlib import Path

import ml_collections

from mri_jax.errors import UserInputError


def packaged_configs() -> Path:
  """The folder of the installed `configs` package."""
  import configs

  return Path(configs.__file__).resolve().parent


def resolve(path: str) -> Path:
  """A config file from a path, or from a path relative to the installed `configs` package."""
  p = Path(path)
  if p.is_file():
    return p
  root = packaged_configs()
  for candidate in (root / path, root / Path(*p.parts[1:]) if p.parts[:1] == ("configs",) else None):
    if candidate is not None and candidate.is_file():
      return candidate
  raise UserInputError(f"config file '{path}' does not exist (give a path, or one of the packaged configs "
                       f"under {root}, e.g. default.py)")


def load(spec: str, overrides: list[str] = ()) -> ml_collections.ConfigDict:
  """The locked config of 'FILE[:ARG]' with '--config.a.b=value' overrides applied.

  Raises:
    UserInputError: a missing file, a config that fails to load, an unknown field, a value that
      does not parse as the field's type, or an argument that is not an override.
  """
  from absl import flags
  from ml_collections import config_flags

  path, sep, arg = spec.partition(":")
  spec = str(resolve(path)) + sep + arg
  for item in overrides:
    if not item.startswith("--config.") or "=" not in item:
      raise UserInputError(f"unrecognised argument {item!r} (overrides look like --config.train.batch=16)")
  argv = ["mri-jax", f"--config={spec}", *overrides]
  values = flags.FlagValues()
  config_flags.DEFINE_config_file("config", None, "experiment config", flag_values=values, lock_config=True,
                                  sys_argv=argv)
  try:
    values(argv)
    cfg = values.config
  except AttributeError as err:  # an override of a field the config does not have
    raise UserInputError(f"config has no field {str(err).strip(chr(39))!r} (see the config file for its fields)") from None
  except (flags.Error, OSError, KeyError, TypeError, ValueError) as err:
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    detail = lines[-1] if lines else type(err).__name__
    if lines and lines[0].startswith("flag --config.") and "Error whilst parsing config file" not in lines[0]:
      detail = lines[0][len("flag "):]
    raise UserInputError(f"cannot load config '{spec}': {detail}") from None
  return cfg
