"""Every command's bad inputs in one table (issue 17): each gives exit 2, exactly one line on
stderr, no traceback, nothing written at or beside the output path, and leaves the inputs as they
were — and does so fast, because options and files are checked before JAX compiles anything.

A case is (command line, expected fragment of the error line). `{d}` in the command line is the
folder of prepared bad inputs (`bad` below); every file and folder in it (hidden temporary files
included) is compared before and after each case. New commands and options join `CASES`.
"""

import hashlib
import os
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest

from mri_jax import checkpoints, config
from mri_jax.models.restorer import Restorer
from tests.conftest import write_nifti

ROOT = Path(__file__).resolve().parents[1]
SECONDS_PER_CASE = 30  # generous for a loaded 2-core machine; a case that needs more validates too late

IMAGE = ["{d}/good.nii.gz", "{d}/out.nii.gz"]
TRAIN = ["train", "--config", "tiny.py", "--workdir", "{d}/new_run"]
UNREACHABLE = ["--coordinator", "127.0.0.1:1", "--num-processes", "2", "--process-id", "1"]

CASES = [
    # ---- simulate
    (["simulate", "{d}/missing.nii.gz", "{d}/out.nii.gz"], "does not exist"),
    (["simulate", "{d}/text.nii.gz", "{d}/out.nii.gz"], "cannot read"),
    (["simulate", "{d}/four_d.nii.gz", "{d}/out.nii.gz"], "only 2-D or 3-D"),
    (["simulate", "{d}/nan.nii.gz", "{d}/out.nii.gz"], "NaN/Inf"),
    (["simulate", "{d}/zeros.nii.gz", "{d}/out.nii.gz"], "no positive voxel"),
    (["simulate", "{d}/constant.nii.gz", "{d}/out.nii.gz"], "is constant"),
    (["simulate", "{d}/one.nii.gz", "{d}/out.nii.gz"], "is constant"),  # 1×1: one value
    (["simulate", "{d}/three.nii.gz", "{d}/out.nii.gz"], "too small"),
    (["simulate", "{d}/rod.nii.gz", "{d}/out.nii.gz"], "too small"),
    (["simulate", "{d}/good.nii.gz", "{d}/exists.nii.gz"], "already exists"),
    (["simulate", "{d}/good.nii.gz", "{d}/good.nii.gz"], "is the input"),
    (["simulate", "{d}/good.nii.gz", "{d}/no_dir/out.nii.gz"], "does not exist"),
    (["simulate", "{d}/good.nii.gz", "{d}/out.png"], "must be a NIfTI"),
    (["simulate", *IMAGE, "--save-field", "{d}/out.nii.gz"], "--save-field must differ"),
    (["simulate", *IMAGE, "--coils", "0"], "--coils"),
    (["simulate", *IMAGE, "--rings", "3"], "--rings"),
    (["simulate", *IMAGE, "--seed", "-1"], "--seed"),
    (["simulate", *IMAGE, "--noise", "nan"], "--noise"),
    (["simulate", *IMAGE, "--coil-model", "birdcage"], "invalid choice"),
    # ---- n4
    (["n4", "{d}/constant.nii.gz", "{d}/out.nii.gz"], "is constant"),
    (["n4", "{d}/zeros.nii.gz", "{d}/out.nii.gz"], "no positive voxel"),
    (["n4", "{d}/one.nii.gz", "{d}/out.nii.gz"], "too small"),
    (["n4", "{d}/three.nii.gz", "{d}/out.nii.gz"], "N4 needs a foreground"),
    (["n4", "{d}/good.nii.gz", "{d}/good.nii.gz"], "is the input"),
    (["n4", *IMAGE, "--mask", "{d}/small_mask.nii.gz"], "has shape"),
    (["n4", *IMAGE, "--mask", "{d}/empty_mask.nii.gz"], "mask holds 0"),
    (["n4", *IMAGE, "--shrink", "0"], "shrink"),
    (["n4", *IMAGE, "--iterations", "5,x"], "comma-separated"),
    (["n4", *IMAGE, "--control-points", "2"], "control points"),
    (["n4", *IMAGE, "--backend", "ants"], "invalid choice"),
    (["n4", *IMAGE, "--save-field", "{d}/exists.nii.gz"], "already exists"),
    # ---- restore: options, paths and image before the model; then the checkpoint
    (["restore", *IMAGE, "--steps", "0"], "--steps"),
    (["restore", *IMAGE, "--batch-size", "0"], "--batch-size"),
    (["restore", *IMAGE, "--seed", "-5"], "--seed"),
    (["restore", *IMAGE, "--fidelity", "2"], "--fidelity"),
    (["restore", *IMAGE, "--n4", "none", "--save-field", "{d}/f.nii.gz"], "--save-field needs an N4 field"),
    (["restore", *IMAGE, "--save-residual", "{d}/out.nii.gz"], "must be different files"),
    (["restore", *IMAGE, "--save-uncertainty", "{d}/u.nii.gz", "--uncertainty-seeds", "1"], "--uncertainty-seeds"),
    (["restore", "{d}/constant.nii.gz", "{d}/out.nii.gz"], "is constant"),
    (["restore", "{d}/zeros.nii.gz", "{d}/out.nii.gz"], "no positive voxel"),
    (["restore", "{d}/negative.nii.gz", "{d}/out.nii.gz"], "no positive voxel"),
    (["restore", "{d}/one.nii.gz", "{d}/out.nii.gz"], "is constant"),
    (["restore", "{d}/three.nii.gz", "{d}/out.nii.gz"], "too small"),
    (["restore", "{d}/four_d.nii.gz", "{d}/out.nii.gz"], "only 2-D or 3-D"),
    (["restore", "{d}/good.nii.gz", "{d}/exists.nii.gz"], "already exists"),
    (["restore", *IMAGE, "--checkpoint", "{d}/truncated"], "not a weights file"),
    (["restore", *IMAGE, "--checkpoint", "{d}/text_npz"], "not a weights file"),
    (["restore", *IMAGE, "--checkpoint", "{d}/nan_weights"], "NaN or Inf weights"),
    (["restore", *IMAGE, "--checkpoint", "{d}/no_config"], "has no config.json"),
    (["restore", *IMAGE, "--checkpoint", "{d}/afile"], "is not a directory"),
    (["restore", *IMAGE, "--noise-clamp", "-1"], "--noise-clamp"),
    (["restore", *IMAGE, "--field-net", "1.5"], "--field-net"),
    (["restore", *IMAGE, "--n4-mode", "cube"], "invalid choice"),
    (["restore", *IMAGE, "--series", "1.2.3"], "--series picks a series"),
    (["restore", "{d}/empty_dir", "{d}/out.nii.gz"], "no DICOM series found"),
    (["restore", "{d}/good.nii.gz"], "give INPUT OUTPUT"),
    (["restore", "{d}/good.nii.gz", "{d}/good.nii.gz", "{d}/out.nii.gz"], "with --output-dir"),
    (["restore", "{d}/good.nii.gz", "--output-dir", "{d}/afile"], "is not a folder"),
    (["restore", "{d}/empty_dir", "--output-dir", "{d}/new_out"], "holds no NIfTI file"),
    (["restore", "{d}/good.nii.gz", "-o", "{d}/new_out", "--save-residual", "{d}/r.nii.gz"], "--save-residual"),
    (["restore", *IMAGE, "--checkpoint", "{d}/empty_dir"], "has no config.json"),
    (["restore", *IMAGE, "--checkpoint", "{d}/exported", "--steps", "99"], "for this model"),
    (["restore", *IMAGE, "--checkpoint", "{d}/exported", "--n4", "none"], "trained with N4 conditioning"),
    (["restore", *IMAGE, "--n4", "none"], "trained with N4 conditioning"),  # the shipped model
    # ---- train: nothing written (no config.json in a new workdir) before the checks pass
    ([*TRAIN, "--config.train.batch=0"], "train.batch"),
    ([*TRAIN, "--config.train.nope=1"], "no field"),
    ([*TRAIN, "--config.train.batch=many"], "cannot load config"),
    ([*TRAIN, "--bogus"], "unrecognised argument"),
    (["train", "--config", "{d}/nope.py", "--workdir", "{d}/new_run"], "does not exist"),
    (["train", "--config", "tiny.py", "--workdir", "{d}/afile"], "not a folder"),
    ([*TRAIN, "--config.data.data_dir={d}/no_data"], "build-data"),
    ([*TRAIN, "--coordinator", "127.0.0.1:1"], "go together"),
    ([*TRAIN, *UNREACHABLE, "--init-timeout", "1"], "did not answer within 1 s"),
    ([*TRAIN, *UNREACHABLE[:-1], "5"], "--process-id"),
    ([*TRAIN, "--coordinator", "127.0.0.1", *UNREACHABLE[2:]], "HOST:PORT"),
    ([*TRAIN, *UNREACHABLE, "--init-timeout", "0"], "--init-timeout"),
    # ---- export-weights
    (["export-weights", "{d}/exported", "{d}/weights_out"], "not a training workdir"),
    (["export-weights", "{d}/missing_run", "{d}/weights_out"], "not a training workdir"),
    (["export-weights", "{d}/damaged_run", "{d}/weights_out"], "cannot read checkpoint step 5"),
    (["export-weights", "{d}/damaged_run", "{d}/afile/weights"], "is a file"),
    # ---- ablations
    (["ablations", "{d}/missing_run"], "does not exist"),
    (["ablations", "{d}/empty_dir"], "holds none"),
    (["ablations", "{d}/exported"], "no metrics.jsonl"),
    (["ablations", "{d}/torn_log_run"], "is not JSON"),
    (["ablations", "{d}/logged_run", "--markdown", "{d}/afile/table.md"], "cannot create the folder"),
    (["ablations", "{d}/logged_run", "--plot", "{d}/empty_dir"], "is a directory"),
    # ---- evaluate
    (["evaluate", "{d}/eval_out", "--slices", "0"], "--slices"),
    (["evaluate", "{d}/eval_out", "--real-slices", "1"], "--real-slices"),
    (["evaluate", "{d}/eval_out", "--no-real"], "nothing to evaluate"),
    (["evaluate", "{d}/eval_out", "--split", "train"], "invalid choice"),
    (["evaluate", "{d}/eval_out", "--checkpoint", "{d}/truncated"], "not a weights file"),
    (["evaluate", "{d}/eval_out", "--steps", "0"], "--steps"),
    (["evaluate", "{d}/afile"], "not a directory"),
    (["evaluate", "{d}/eval_out", "--data-dir", "{d}/no_data", "--real-set", "none"], "cannot read dataset"),
    # ---- demo: checked before the subject is made, and no OUTDIR left behind
    (["demo", "{d}/demo_out", "--steps", "0"], "--steps"),
    (["demo", "{d}/demo_out", "--steps", "99"], "for this model"),
    (["demo", "{d}/demo_out", "--seed", "-1"], "--seed"),
    (["demo", "{d}/demo_out", "--coils", "0"], "--coils"),
    (["demo", "{d}/demo_out", "--checkpoint", "{d}/truncated"], "not a weights file"),
    (["demo", "{d}/afile"], "not a folder"),
    (["demo", "{d}/afile/demo_out"], "is a file"),
    # ---- build-data
    (["build-data", "--config", "nope", "--data-dir", "{d}/tfds"], "unknown config"),
    (["build-data", "--config", "slices128_nifti", "--data-dir", "{d}/tfds"], "--manual-dir"),
    (["build-data", "--config", "slices128_nifti", "--data-dir", "{d}/tfds", "--manual-dir", "{d}/afile"],
     "is not a directory"),
    (["build-data", "--config", "tiny", "--data-dir", "{d}/tfds", "--manual-dir", "{d}/empty_dir"], "synthetic"),
    (["build-data", "--config", "tiny", "--data-dir", "{d}/tfds", "--seed", "-1"], "--seed"),
    (["build-data", "--config", "tiny", "--data-dir", "{d}/tfds", "--subjects", "0,1,1"], "--subjects"),
    (["build-data", "--config", "tiny", "--data-dir", "{d}/tfds", "--subjects", "1,x"], "comma-separated"),
    (["build-data", "--config", "tiny", "--data-dir", "{d}/afile/tfds"], "is a file"),
    (["build-data", "--config", "tiny", "--data-dir", "{d}/tfds", "--n4-backend", "ants"], "invalid choice"),
]

# Run as `python -m mri_jax` too: no traceback reaches the console either.
CONSOLE_CASES = [c for c in CASES if c[0][-1] in ("{d}/truncated", "--config.train.batch=0", "ants")][:3]


def _case_id(case) -> str:
  argv, _ = case
  return "-".join(a.replace("{d}/", "").replace("--config.", "") for a in argv)[:90]


@pytest.fixture(scope="module")
def bad(tmp_path_factory):
  """The folder of bad (and a few good) inputs the cases name as `{d}`."""
  d = tmp_path_factory.mktemp("bad_inputs")
  rng = np.random.default_rng(0)
  write_nifti(d / "good.nii.gz", rng.uniform(0.1, 1.0, (24, 24, 4)))
  write_nifti(d / "exists.nii.gz", rng.uniform(0.1, 1.0, (24, 24)))
  write_nifti(d / "constant.nii.gz", np.full((24, 24, 4), 5.0))
  write_nifti(d / "zeros.nii.gz", np.zeros((24, 24)))
  write_nifti(d / "negative.nii.gz", -rng.uniform(0.1, 1.0, (24, 24)))
  write_nifti(d / "one.nii.gz", np.full((1, 1), 3.0))
  write_nifti(d / "three.nii.gz", rng.uniform(0.1, 1.0, (3, 3)))
  write_nifti(d / "rod.nii.gz", rng.uniform(0.1, 1.0, (40, 3, 3)))
  write_nifti(d / "four_d.nii.gz", np.ones((8, 8, 8, 2)))
  nan = rng.uniform(0.1, 1.0, (24, 24))
  nan[3, 3] = np.nan
  write_nifti(d / "nan.nii.gz", nan)
  write_nifti(d / "small_mask.nii.gz", np.ones((7, 7)))
  write_nifti(d / "empty_mask.nii.gz", np.zeros((24, 24, 4)))
  (d / "text.nii.gz").write_text("not an image\n")
  (d / "afile").write_text("a file where a folder is expected\n")
  (d / "empty_dir").mkdir()

  # Exported weights of the tiny model (constant values: shapes are all a load checks, and no
  # initialiser is compiled) and damaged copies of them.
  cfg = config.load("tiny.py")
  template = Restorer.from_config(cfg).abstract_params()
  checkpoints.save_weights(d / "exported", cfg.to_dict(), jax.tree.map(lambda s: np.full(s.shape, 0.01, np.float32),
                                                                      template))
  count = iter(range(10 ** 6))
  poisoned = jax.tree.map(lambda s: np.full(s.shape, np.nan if next(count) == 0 else 0.01, np.float32), template)
  checkpoints.save_weights(d / "nan_weights", cfg.to_dict(), poisoned)
  npz = (d / "exported" / checkpoints.WEIGHTS_FILE).read_bytes()
  for name, payload in (("truncated", npz[:len(npz) // 2]), ("text_npz", b"not weights\n"), ("no_config", npz)):
    (d / name).mkdir()
    (d / name / checkpoints.WEIGHTS_FILE).write_bytes(payload)
    if name != "no_config":
      (d / name / checkpoints.CONFIG_FILE).write_bytes((d / "exported" / checkpoints.CONFIG_FILE).read_bytes())

  # Training workdirs: one logged, one with a damaged log, one with a damaged checkpoint.
  config_json = (d / "exported" / checkpoints.CONFIG_FILE).read_text()
  for name, log in (("logged_run", '{"step": 4, "stage": "eval_diffusion", "restored_ssim": 0.5}\n'),
                    ("torn_log_run", '{"step": 1, "stage": "ae"}\nnot json\n{"step": 2, "stage": "ae"}\n'),
                    ("damaged_run", None)):
    (d / name).mkdir()
    (d / name / "config.json").write_text(config_json)
    if log:
      (d / name / "metrics.jsonl").write_text(log)
  (d / "damaged_run" / "checkpoints" / "5").mkdir(parents=True)
  return d


def _snapshot(folder: Path) -> dict:
  """Every path under `folder` (hidden ones too) → its bytes' hash (None for folders)."""
  out = {}
  for root, dirs, files in os.walk(folder):
    for name in dirs:
      out[os.path.relpath(os.path.join(root, name), folder)] = None
    for name in files:
      path = os.path.join(root, name)
      out[os.path.relpath(path, folder)] = hashlib.sha256(Path(path).read_bytes()).hexdigest()
  return out


def _check(code: int, err: str, message: str) -> None:
  assert code == 2, err
  assert err.endswith("\n") and err.count("\n") == 1, f"not exactly one line on stderr:\n{err}"
  assert "Traceback" not in err and "error:" in err
  assert message in err, err
  assert "allow_pickle" not in err and "unsafe" not in err  # never invite the user to load pickles


@pytest.mark.parametrize("argv, message", CASES, ids=[_case_id(c) for c in CASES])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(argv, message, bad, capsys):
  from mri_jax import cli

  argv = [a.replace("{d}", str(bad)) for a in argv]
  before = _snapshot(bad)
  capsys.readouterr()
  t0 = time.perf_counter()
  try:
    code = cli.main(argv)
  except SystemExit as exc:  # argparse reports bad option values through the parser
    code = exc.code
  seconds = time.perf_counter() - t0
  _check(code, capsys.readouterr().err, message)
  assert _snapshot(bad) == before, "a file was written, removed or changed"
  assert seconds < SECONDS_PER_CASE, f"{seconds:.1f} s: the check comes too late"


@pytest.mark.parametrize("argv, message", CONSOLE_CASES, ids=[_case_id(c) for c in CONSOLE_CASES])
def test_console_shows_one_line_and_no_traceback(argv, message, bad):
  before = _snapshot(bad)
  proc = subprocess.run([sys.executable, "-m", "mri_jax", *(a.replace("{d}", str(bad)) for a in argv)],
                        cwd=ROOT, env=dict(os.environ, JAX_PLATFORMS="cpu"), capture_output=True, text=True,
                        timeout=120)
  _check(proc.returncode, proc.stderr, message)
  assert _snapshot(bad) == before


def test_n4_writes_negative_voxels_as_zero(bad, tmp_path, capsys):
  """An odd input, not a bad one: negative voxels come out as 0 (as in `restore`), and are counted."""
  from mri_jax import cli

  x = np.random.default_rng(1).uniform(-0.3, 1.0, (32, 32, 4))
  src, out, field = write_nifti(tmp_path / "neg.nii.gz", x), tmp_path / "out.nii.gz", tmp_path / "field.nii.gz"
  before = src.read_bytes()
  assert cli.main(["n4", str(src), str(out), "--save-field", str(field), "--iterations", "5,5"]) == 0
  assert f"{int((x < 0).sum())} negative voxel(s) written as 0" in capsys.readouterr().out
  import nibabel as nib

  o, f = nib.load(str(out)).get_fdata(), nib.load(str(field)).get_fdata()
  assert o.min() == 0.0 and src.read_bytes() == before
  kept = x >= 0
  np.testing.assert_allclose((o * f)[kept], x[kept], rtol=1e-4, atol=1e-5)
