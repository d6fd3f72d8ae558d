"""One table of all ablation runs, from what each training run wrote.

Every `mri-jax train` workdir holds `config.json` and `metrics.jsonl`; the last validation rows
(`eval_ae`: the autoencoder's reconstruction, the restorer's ceiling; `eval_diffusion`: restored,
corrupted and N4 against the clean image, masked SSIM / PSNR) are the run's result. `collect`
gathers them, `to_markdown` / `to_csv` format them and `plot` draws SSIM and PSNR per run.
Runs are only comparable when they share the dataset, the validation batches
(`train.batch` × `train.eval_batches`) and the training budget; the table shows all three.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from mri_jax.errors import UserInputError

COLUMNS = ("run", "space", "n4_cond", "fidelity", "schedule", "T", "K", "dtype", "data", "val_examples", "steps",
           "restored_ssim", "restored_psnr", "n4_ssim", "n4_psnr", "corrupted_ssim", "corrupted_psnr",
           "ae_ssim", "ae_psnr")


def find_runs(paths) -> list[Path]:
  """Workdirs among `paths`: each path itself if it holds config.json, else its direct subfolders that do."""
  runs = []
  for p in map(Path, paths):
    if (p / "config.json").is_file():
      runs.append(p)
    elif p.is_dir():
      found = sorted(q for q in p.iterdir() if (q / "config.json").is_file())
      if not found:
        raise UserInputError(f"'{p}' is not a training workdir and holds none (no config.json)")
      runs += found
    else:
      raise UserInputError(f"'{p}' does not exist")
  return runs


def _last(rows: list[dict], stage: str) -> dict:
  picked = [r for r in rows if r.get("stage") == stage]
  return picked[-1] if picked else {}


def summarise(workdir) -> dict:
  """The table row of one run: its config's ablation axes and its last validation scores."""
  workdir = Path(workdir)
  try:
    cfg = json.loads((workdir / "config.json").read_text())
  except (OSError, ValueError) as err:
    raise UserInputError(f"cannot read '{workdir / 'config.json'}': {err}") from None
  path = workdir / "metrics.jsonl"
  if not path.is_file():
    raise UserInputError(f"'{workdir}' has no metrics.jsonl (the run has not logged a step yet)")
  rows, lines = [], path.read_text().splitlines()
  for i, line in enumerate(lines):
    try:
      rows.append(json.loads(line))
    except ValueError:
      if i < len(lines) - 1:  # a torn last line of a killed run is fine
        raise UserInputError(f"'{path}' line {i + 1} is not JSON") from None
  model, sched, train = cfg.get("model", {}), cfg.get("schedule", {}), cfg.get("train", {})
  # the restorer's last validation: after the fidelity stage when the run has one
  dif = _last(rows, "eval_fidelity") or _last(rows, "eval_diffusion")
  ae = _last(rows, "eval_ae")
  row = {
      "run": workdir.name,
      "space": model.get("space", "latent"),
      "n4_cond": bool(model.get("condition_n4", True)),
      "fidelity": bool(model.get("fidelity", False)),
      "schedule": sched.get("kind"),
      "T": sched.get("steps"),
      "K": sched.get("sample_steps"),
      "dtype": train.get("compute_dtype", "float32"),
      "data": cfg.get("data", {}).get("name"),
      "val_examples": train.get("batch", 0) * train.get("eval_batches", 1),
      "steps": max((r.get("step", 0) for r in rows), default=0),
  }
  for k in ("restored", "n4", "corrupted"):
    for m in ("ssim", "psnr"):
      row[f"{k}_{m}"] = dif.get(f"{k}_{m}")
  row["ae_ssim"], row["ae_psnr"] = ae.get("ae_ssim"), ae.get("ae_psnr")
  return row


def collect(paths) -> list[dict]:
  """Rows for every run found under `paths` (see `find_runs`), in the order found."""
  return [summarise(p) for p in find_runs(paths)]


def _fmt(v) -> str:
  if v is None:
    return "–"
  if isinstance(v, bool):
    return "yes" if v else "no"
  if isinstance(v, float):
    return f"{v:.4f}" if abs(v) < 2 else f"{v:.2f}"
  return str(v)


def to_markdown(rows: list[dict]) -> str:
  """The rows as a markdown table with `COLUMNS` (missing scores as –)."""
  head = "| " + " | ".join(COLUMNS) + " |\n|" + "---|" * len(COLUMNS) + "\n"
  return head + "".join("| " + " | ".join(_fmt(r[c]) for c in COLUMNS) + " |\n" for r in rows)


def to_csv(rows: list[dict]) -> str:
  """The rows as CSV with `COLUMNS` (missing scores empty)."""
  buf = io.StringIO()
  w = csv.DictWriter(buf, fieldnames=COLUMNS, lineterminator="\n")
  w.writeheader()
  w.writerows(rows)
  return buf.getvalue()


def plot(rows: list[dict], path) -> None:
  """Bar chart of restored SSIM and PSNR per run, with the N4 and corrupted levels and the AE ceiling."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  import numpy as np

  from mri_jax.io.nifti import save_figure

  names = [r["run"] for r in rows]
  x = np.arange(len(rows))
  fig, axes = plt.subplots(1, 2, figsize=(max(6.0, 1.2 * len(rows) + 3), 3.6))
  for ax, m, label in ((axes[0], "ssim", "SSIM"), (axes[1], "psnr", "PSNR (dB)")):
    vals = [r[f"restored_{m}"] if r[f"restored_{m}"] is not None else np.nan for r in rows]
    ax.bar(x, vals, color="tab:blue", label="restored")
    for key, style, what in (("n4", "tab:orange", "N4"), ("corrupted", "tab:gray", "corrupted"),
                             ("ae", "tab:green", "AE ceiling")):
      pts = [r[f"{key}_{m}"] if r[f"{key}_{m}"] is not None else np.nan for r in rows]
      ax.plot(x, pts, "_", markersize=22, mew=2.5, color=style, label=what)
    ax.set_xticks(x, names, rotation=30, ha="right")
    ax.set_ylabel(label)
    finite = [v for r in rows for k in ("restored", "n4", "corrupted", "ae")
              if (v := r[f"{k}_{m}"]) is not None]
    if finite:
      lo, hi = min(finite), max(finite)
      ax.set_ylim(lo - 0.1 * (hi - lo + 1e-6), hi + 0.1 * (hi - lo + 1e-6))
  axes[0].legend(fontsize=7, loc="lower left")
  fig.suptitle("ablations: last validation scores (masked, vs clean)")
  fig.tight_layout()
  save_figure(path, fig, dpi=110)
  plt.close(fig)


def write(rows: list[dict], *, markdown_path=None, csv_path=None, plot_path=None) -> list[str]:
  """Writes the table as markdown / CSV / a bar chart to the paths given (parent folders created,
  files written atomically); returns the paths written.

  Raises:
    UserInputError: a path whose parent folder cannot be created (e.g. a file is in the way).
  """
  from mri_jax.io.nifti import atomic_write_bytes

  wanted = [p for p in (markdown_path, csv_path, plot_path) if p]
  for path in wanted:
    parent = Path(path).parent
    try:
      parent.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError, PermissionError) as err:
      raise UserInputError(f"cannot create the folder of '{path}' ({type(err).__name__}: a file is in the way "
                           "or it is not writable)") from None
    if Path(path).is_dir():
      raise UserInputError(f"'{path}' is a directory")
  if markdown_path:
    atomic_write_bytes(markdown_path, to_markdown(rows).encode())
  if csv_path:
    atomic_write_bytes(csv_path, to_csv(rows).encode())
  if plot_path:
    plot(rows, plot_path)
  return [str(p) for p in wanted]
