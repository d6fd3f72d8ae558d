"""Many inputs in one process: `mri-jax restore IN [IN ...] --output-dir D`.

Inputs are NIfTI files, DICOM files, folders holding a DICOM series, and folders of those (a
folder's NIfTI files, its DICOM files that belong to no series, and each DICOM series in it; sub-folders are not
searched). The model is loaded and compiled once; each input is restored into D (NIfTI inputs keep
their file name, DICOM inputs become `<folder>_s<series number>_<description>.nii.gz`); one line is
printed per file, with a progress bar over files. One file's failure (unreadable, not an image,
output already there without --overwrite) is reported and the others go on; the caller exits
non-zero at the end if any failed. Outputs are written atomically, so a failed or interrupted file
leaves nothing half-written.
"""

from __future__ import annotations

import dataclasses
import sys
import time
import traceback
from pathlib import Path

from mri_jax import restore
from mri_jax.errors import UserInputError
from mri_jax.io import dicom, nifti

NIFTI_SUFFIXES = (".nii", ".nii.gz")


@dataclasses.dataclass(frozen=True)
class Job:
  """One image to restore: its source (file or DICOM folder), the series UID (DICOM folders) and
  the output file name."""

  source: Path
  series: str | None
  name: str

  @property
  def label(self) -> str:
    return f"{self.source}" + (f" [series {self.series}]" if self.series else "")


def _is_nifti(path: Path) -> bool:
  return path.name.lower().endswith(NIFTI_SUFFIXES)


def _file_job(path: Path) -> Job:
  """A NIfTI file keeps its name; a DICOM file becomes <stem>.nii.gz."""
  return Job(path, None, path.name if _is_nifti(path) else f"{path.stem}.nii.gz")


def _series_jobs(folder: Path, series: list[dicom.Series]) -> list[Job]:
  return [Job(folder, s.uid, f"{s.label}.nii.gz") for s in series]


def expand_inputs(paths, *, series: str | None = None) -> list[Job]:
  """The jobs for INPUT paths (see the module docstring).

  Raises:
    UserInputError: a missing path, a folder with nothing to restore, `series` with other than one
      DICOM folder, or two inputs that would write the same output name.
  """
  paths = [Path(p) for p in paths]
  if not paths:
    raise UserInputError("no INPUT given")
  if series is not None and (len(paths) != 1 or not paths[0].is_dir()):
    raise UserInputError("--series picks one series of one DICOM folder: give that folder as the only INPUT")
  jobs: list[Job] = []
  for path in paths:
    if not path.exists():
      raise UserInputError(f"input '{path}' does not exist")
    if path.is_file():
      if not (_is_nifti(path) or dicom.is_dicom_file(path)):
        raise UserInputError(f"input '{path}' is neither NIfTI (.nii, .nii.gz) nor DICOM")
      jobs.append(_file_job(path))
      continue
    found = dicom.list_series(path) if series is None else [dicom.select_series(path, series)]
    in_series = {str(Path(f).resolve()) for s in found for f in s.files}
    files = sorted(f for f in path.iterdir() if f.is_file()) if series is None else []
    loose = [f for f in files if not _is_nifti(f) and str(f.resolve()) not in in_series
             and f.suffix.lower() in dicom.DICOM_SUFFIXES]  # DICOM files in no series
    folder_jobs = [_file_job(f) for f in [*(f for f in files if _is_nifti(f)), *loose]]
    folder_jobs += _series_jobs(path, found)
    jobs += folder_jobs
    if not folder_jobs:
      raise UserInputError(f"input folder '{path}' holds no NIfTI file and no DICOM series (sub-folders are "
                           "not searched)")
  names: dict[str, Job] = {}
  for job in jobs:
    key = job.name.lower()
    if key in names:
      raise UserInputError(f"inputs '{names[key].label}' and '{job.label}' would both be written as "
                           f"'{job.name}'; restore them in separate runs or rename one")
    names[key] = job
  return jobs


@dataclasses.dataclass
class FileResult:
  """The outcome of one job: output path and `restore_nifti` summary, or the error."""

  job: Job
  output: Path
  summary: dict | None = None
  error: str | None = None
  internal: bool = False  # an unexpected error (a bug), not a problem with the input
  seconds: float = 0.0


def restore_files(inputs, output_dir, *, series: str | None = None, checkpoint=None, overwrite: bool = False,
                  progress: bool = False, log=print, **options) -> list[FileResult]:
  """Restores every input into `output_dir` (created if needed) with one loaded model.

  `options` are `restore_nifti`'s (steps, seed, n4, n4_mode, batch_size, axis, fidelity, lowfreq,
  noise_clamp, blend, wiener, field_net, noise_floor).
  Returns one FileResult per job, in input order; failures are in the results, not raised.

  Raises:
    UserInputError: for problems found before any work (options, inputs, the output folder, the model).
  """
  from tqdm.auto import tqdm

  restore.check_options(**options)
  output_dir = nifti.check_folder(output_dir, "--output-dir")
  jobs = expand_inputs(inputs, series=series)
  model = restore.load_model(checkpoint)
  restore.check_model_options(model, steps=options.get("steps"), n4=options.get("n4", "jax"))
  output_dir.mkdir(parents=True, exist_ok=True)
  results = []
  bar = tqdm(jobs, desc="files", unit="file", disable=not progress or len(jobs) < 2, file=sys.stderr)
  for job in bar:
    out = output_dir / job.name
    t0 = time.perf_counter()
    res = FileResult(job, out)
    try:
      res.summary = restore.restore_nifti(job.source, out, model=model, series=job.series, overwrite=overwrite,
                                          progress=progress, **options)
    except UserInputError as err:
      res.error = str(err)
    except (KeyboardInterrupt, SystemExit):
      raise
    except Exception as err:  # noqa: BLE001 — one bad file must not stop the others; reported as a bug
      res.error = f"{type(err).__name__}: {err} (an internal error; please report it)"
      res.internal = True
      traceback.print_exc(file=sys.stderr)
    res.seconds = time.perf_counter() - t0
    results.append(res)
    line = (f"failed {job.label}: {res.error}" if res.error else
            f"wrote {out} ({res.seconds:.2f} s, shape {res.summary['shape']}"
            + (f", slices along axis {res.summary['axis']}" if res.summary["axis"] is not None else "")
            + (f", consistency flagged {len(res.summary['consistency']['flagged'])} slice(s)"
               if res.summary["consistency"]["flagged"] else "") + ")")
    if progress and len(jobs) > 1:
      bar.write(line, file=sys.stderr if res.error else sys.stdout)
    elif res.error:
      print(line, file=sys.stderr)
    else:
      log(line)
  return results
