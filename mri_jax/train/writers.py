"""What a training run writes besides checkpoints: its workdir's config.json, the metric log
(TensorBoard event files and metrics.jsonl) and the PNG grids of validation images.

clu's `metric_writers` package imports TensorFlow on import, which this project never installs;
`tensorboardX` writes the same event files. `MetricWriter` offers clu's writer interface
(`write_scalars`, `write_images`, `flush`, `close`) so the loop reads the same.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np

from mri_jax.errors import UserInputError
from mri_jax.io.nifti import atomic_write_bytes

STRUCTURAL = ("model", "schedule", "data")  # config groups a resumed run must share


def check_workdir(config_json: dict, workdir: Path, *, write: bool) -> None:
  """Writes `workdir/config.json` (when `write`: process 0), or refuses a workdir holding a run with
  another model / schedule / data config."""
  path = workdir / "config.json"
  if path.exists():
    theirs = json.loads(path.read_text())
    diff = [k for k in STRUCTURAL if theirs.get(k) != config_json.get(k)]
    if diff:
      raise UserInputError(f"workdir '{workdir}' holds a run with a different {', '.join(diff)} config; "
                           "use another --workdir (or delete it to start over)")
    joint = lambda c: bool((c.get("train") or {}).get("joint_steps", 0))  # noqa: E731
    if joint(theirs) != joint(config_json):  # its checkpoints hold (or lack) the joint stage's optimiser
      raise UserInputError(f"workdir '{workdir}' holds a run {'with' if joint(theirs) else 'without'} a joint stage "
                           f"(train.joint_steps); to {'drop' if joint(theirs) else 'add'} it, train in a new "
                           f"--workdir with --init-from '{workdir}'")
  elif write:
    workdir.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, json.dumps(config_json, indent=2).encode())


def truncate_log(workdir: Path, step: int) -> None:
  """Drops the lines of `metrics.jsonl` logged after `step` (a resumed run logs them again), and a
  torn last line; so every step appears once."""
  path = Path(workdir) / "metrics.jsonl"
  if not path.is_file():
    return
  kept = []
  for line in path.read_text().splitlines():
    try:
      row = json.loads(line)
    except ValueError:
      continue
    if int(row.get("step", 0)) <= step:
      kept.append(line)
  atomic_write_bytes(path, "".join(k + "\n" for k in kept).encode())


def image_grid(images: dict, rows: int = 4) -> np.ndarray:
  """uint8 grid: one row per example, one column per entry of `images` (foreground mean 1 → 0.5)."""
  cols = [np.asarray(v[:rows], np.float32) for v in images.values()]
  grid = np.concatenate([np.concatenate(list(c), axis=0) for c in cols], axis=1)
  return (np.clip(grid / 2.0, 0.0, 1.0) * 255).round().astype(np.uint8)


def save_png(path: Path, grid: np.ndarray) -> None:
  """Writes a uint8 grid as a grayscale PNG, atomically."""
  import matplotlib.image

  path.parent.mkdir(parents=True, exist_ok=True)
  buf = io.BytesIO()
  matplotlib.image.imsave(buf, grid, cmap="gray", vmin=0, vmax=255, format="png")
  atomic_write_bytes(path, buf.getvalue())


class MetricWriter:
  """Writes scalars to `workdir/tensorboard` and `workdir/metrics.jsonl`, images to TensorBoard."""

  def __init__(self, workdir, *, tensorboard: bool = True):
    self._jsonl = open(Path(workdir) / "metrics.jsonl", "a")
    self._tb = None
    if tensorboard:
      from tensorboardX import SummaryWriter

      self._tb = SummaryWriter(logdir=str(Path(workdir) / "tensorboard"), flush_secs=30)

  def write_scalars(self, step: int, scalars: dict, *, stage: str) -> None:
    self._jsonl.write(json.dumps({"step": int(step), "stage": stage, **{k: float(v) for k, v in scalars.items()}}) + "\n")
    self._jsonl.flush()
    if self._tb is not None:
      for k, v in scalars.items():
        self._tb.add_scalar(f"{stage}/{k}", float(v), int(step))

  def write_images(self, step: int, images: dict[str, np.ndarray]) -> None:
    """images: name → (H, W) or (H, W, 3) uint8."""
    if self._tb is not None:
      for k, v in images.items():
        self._tb.add_image(k, v, int(step), dataformats="HW" if v.ndim == 2 else "HWC")

  def flush(self) -> None:
    self._jsonl.flush()
    if self._tb is not None:
      self._tb.flush()

  def close(self) -> None:
    self._jsonl.close()
    if self._tb is not None:
      self._tb.close()


class NullWriter:
  """The writer of processes other than 0 in a multi-host run: writes nothing."""

  def write_scalars(self, step: int, scalars: dict, *, stage: str) -> None:
    pass

  def write_images(self, step: int, images: dict) -> None:
    pass

  def flush(self) -> None:
    pass

  def close(self) -> None:
    pass
