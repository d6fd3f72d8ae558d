"""Metric writers: TensorBoard event files (tensorboardX, no TensorFlow) and the JSONL log.

clu's `metric_writers` package imports TensorFlow on import, which this project never installs;
`tensorboardX` writes the same event files. `MetricWriter` offers clu's writer interface
(`write_scalars`, `write_images`, `flush`, `close`) so the loop reads the same.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np


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
