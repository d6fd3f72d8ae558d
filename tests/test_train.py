"""Training on the tiny config: loss decreases, 1 vs 8 devices agree, kill-and-resume is exact."""

import json
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the configs/ package

from configs import tiny  # noqa: E402
from mri_jax import cli, train  # noqa: E402
from mri_jax.errors import UserInputError  # noqa: E402


def _cfg(data_dir, **train_overrides):
  c = tiny.get_config()
  c.data.data_dir = str(data_dir)
  c.train.ae_steps, c.train.diffusion_steps = 6, 6
  c.train.log_every, c.train.checkpoint_every = 1, 4
  c.train.eval_every = 0  # validation is exercised by `full_run` only
  for k, v in train_overrides.items():
    c.train[k] = v
  return c


def _leaves(state):
  return [np.asarray(x) for x in jax.tree.leaves(state)]


@pytest.fixture(scope="module")
def full_run(tiny_dataset, tmp_path_factory):
  data_dir, _ = tiny_dataset
  workdir = tmp_path_factory.mktemp("run_full")
  out = train.train(_cfg(data_dir, eval_every=6), workdir, log=lambda m: None)
  out["workdir"] = workdir
  return out


def test_validation_scores_grid_and_tensorboard_events(full_run):
  evals = [r for r in full_run["history"] if r["stage"].startswith("eval_")]
  assert [(r["step"], r["stage"]) for r in evals] == [(6, "eval_ae"), (12, "eval_diffusion")]
  assert 0.0 < evals[0]["ae_ssim"] <= 1.0 and np.isfinite(evals[0]["ae_psnr"])
  for k in ("restored", "corrupted", "n4"):
    assert np.isfinite(evals[1][f"{k}_ssim"]) and np.isfinite(evals[1][f"{k}_psnr"])
  workdir = full_run["workdir"]
  pngs = sorted(p.name for p in (workdir / "samples").glob("*.png"))
  assert pngs == ["step_0000006_ae.png", "step_0000012_diffusion.png"]
  events = list((workdir / "tensorboard").glob("events.out.tfevents.*"))
  assert events and events[0].stat().st_size > 0
  stages = {json.loads(line)["stage"] for line in (workdir / "metrics.jsonl").read_text().splitlines()}
  assert stages == {"ae", "diffusion", "eval_ae", "eval_diffusion"}


def test_losses_decrease_and_one_step_restoration_is_finite(full_run, tiny_dataset):
  h = full_run["history"]
  ae = [r["loss"] for r in h if r["stage"] == "ae"]  # (eval rows are separate stages)
  dif = [r["loss"] for r in h if r["stage"] == "diffusion"]
  assert len(ae) == 6 and len(dif) == 6
  assert np.mean(ae[-2:]) < np.mean(ae[:2]) and np.mean(dif[-2:]) < np.mean(dif[:2])
  from mri_jax.data import pipeline

  data_dir, _ = tiny_dataset
  loader = pipeline.make_loader("mri_pairs/tiny", "validation", data_dir=data_dir, global_batch=4, seed=0)
  batch = next(iter(loader))
  for k in (1, 3):
    out = train.restore_batch(full_run["setup"], full_run["state"], batch, jax.random.key(0), k=k)
    assert out.shape == batch["clean"].shape and bool(np.all(np.isfinite(np.asarray(out))))


def test_killed_and_resumed_run_ends_with_the_same_weights(full_run, tiny_dataset, tmp_path):
  data_dir, _ = tiny_dataset
  workdir = tmp_path / "run"
  first = train.train(_cfg(data_dir), workdir, stop_after=8, log=lambda m: None)  # "killed" after 8
  assert first["history"][-1]["step"] == 8
  logs = []
  resumed = train.train(_cfg(data_dir), workdir, log=logs.append)
  assert logs[0] == "resumed from step 8"
  for a, b in zip(_leaves(resumed["state"]), _leaves(full_run["state"])):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
  steps = [json.loads(line)["step"] for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  assert steps == list(range(1, 13))


def test_bfloat16_compute_trains_close_to_float32(full_run, tiny_dataset, tmp_path):
  data_dir, _ = tiny_dataset
  out = train.train(_cfg(data_dir, compute_dtype="bfloat16"), tmp_path / "bf16", log=lambda m: None)
  ref = [r["loss"] for r in full_run["history"] if r["stage"] in ("ae", "diffusion")]
  got = [r["loss"] for r in out["history"] if r["stage"] in ("ae", "diffusion")]
  assert len(got) == len(ref) == 12 and np.all(np.isfinite(got))
  np.testing.assert_allclose(got, ref, rtol=0.05)  # same data and keys; bf16 rounding only
  assert np.mean(got[4:6]) < np.mean(got[:2]) and np.mean(got[10:]) < np.mean(got[6:8])
  # master weights stay float32 (what checkpoints and exported weights hold)
  assert {x.dtype for x in jax.tree.leaves(out["state"]["unet"])} == {np.dtype("float32")}
  cfg = _cfg(data_dir, compute_dtype="float16")
  with pytest.raises(UserInputError, match="compute_dtype"):
    train.train(cfg, tmp_path / "f16", log=lambda m: None)
  assert not (tmp_path / "f16").exists()


def test_one_device_and_eight_devices_give_the_same_losses(tiny_dataset, tmp_path):
  data_dir, _ = tiny_dataset
  runs = []
  for devices, name in ((jax.devices()[:1], "one"), (jax.devices(), "eight")):
    cfg = _cfg(data_dir, ae_steps=3, diffusion_steps=2)
    runs.append(train.train(cfg, tmp_path / name, devices=devices, log=lambda m: None)["history"])
  assert len(jax.devices()) == 8
  np.testing.assert_allclose([r["loss"] for r in runs[0]], [r["loss"] for r in runs[1]], rtol=2e-4)


def test_ablation_table_from_run_folders(full_run, tmp_path, capsys):
  import shutil

  runs = tmp_path / "runs"
  for name, edit in (("base", None), ("pixel", "pixel")):
    shutil.copytree(full_run["workdir"], runs / name, ignore=shutil.ignore_patterns("checkpoints", "tensorboard"))
    if edit:
      cfg = json.loads((runs / name / "config.json").read_text())
      cfg["model"]["space"] = edit
      (runs / name / "config.json").write_text(json.dumps(cfg))
  with open(runs / "pixel" / "metrics.jsonl", "a") as f:
    f.write('{"step": 13, "sta')  # a killed run's torn last line is ignored
  out = tmp_path / "report"
  assert cli.main(["ablations", str(runs), "--markdown", str(out / "t.md"), "--csv", str(out / "t.csv"),
                   "--plot", str(out / "t.png")]) == 0
  table = capsys.readouterr().out
  last = [r for r in full_run["history"] if r["stage"] == "eval_diffusion"][-1]
  lines = [l for l in table.splitlines() if l.startswith("| base") or l.startswith("| pixel")]
  assert len(lines) == 2 and "| pixel | pixel |" in lines[1]
  assert f"{last['restored_ssim']:.4f}" in lines[0] and f"{last['n4_psnr']:.2f}" in lines[0]
  rows = (out / "t.csv").read_text().splitlines()
  assert rows[0].startswith("run,space,n4_cond") and len(rows) == 3
  assert (out / "t.png").read_bytes()[:4] == b"\x89PNG" and (out / "t.md").read_text() in table
  assert cli.main(["ablations", str(tmp_path / "none")]) == 2
  assert "does not exist" in capsys.readouterr().err


def test_clear_errors(tiny_dataset, tmp_path):
  data_dir, _ = tiny_dataset
  cfg = _cfg(data_dir, ae_steps=2, diffusion_steps=0)
  cfg.optimizer.lr = float("nan")
  with pytest.raises(FloatingPointError, match="at step 2"):
    train.train(cfg, tmp_path / "nan", log=lambda m: None)
  other = _cfg(data_dir)
  other.model.latent = 3
  with pytest.raises(UserInputError, match="different model"):
    train.train(other, tmp_path / "nan", log=lambda m: None)
  bad = _cfg(data_dir, batch=6)
  with pytest.raises(UserInputError, match="not divisible by 8 devices"):
    train.train(bad, tmp_path / "b", log=lambda m: None)
  missing = _cfg(tmp_path / "nothing")
  with pytest.raises(UserInputError, match="build it with"):
    train.train(missing, tmp_path / "m", log=lambda m: None)


def test_cli_config_overrides(tmp_path):
  root = Path(__file__).resolve().parents[1]
  cfg = cli.load_config(str(root / "configs/tiny.py"),
                        ["--config.train.batch=16", "--config.optimizer.lr=0.01", "--config.model.condition_n4=false",
                         "--config.model.unet_channels=8,16"])
  assert cfg.train.batch == 16 and cfg.optimizer.lr == 0.01 and cfg.model.condition_n4 is False
  assert tuple(cfg.model.unet_channels) == (8, 16)
  for bad, message in (("--config.train.nope=1", "no field"), ("--config.train.batch=x", "cannot read"),
                       ("--batch=3", "unrecognised")):
    with pytest.raises(UserInputError, match=message):
      cli.load_config(str(root / "configs/tiny.py"), [bad])
  with pytest.raises(UserInputError, match="does not exist"):
    cli.load_config(str(tmp_path / "none.py"), [])


@pytest.mark.parametrize("spec", ["configs/default.py", "configs/tiny.py", "configs/ablations/no_n4.py",
                                  "configs/ablations/ddpm_from_noise.py", "configs/ablations/ddpm_from_noise.py:cosine",
                                  "configs/ablations/rev_warmup.py", "configs/ablations/pixel_space.py",
                                  "configs/ablations/steps_k.py:4"])
def test_every_config_builds_its_models_and_one_step_runs(spec):
  import jax.numpy as jnp

  from mri_jax import diffusion
  from mri_jax.train import trainer

  root = Path(__file__).resolve().parents[1]
  cfg = cli.load_config(str(root / spec), [])
  # shrink the networks: this checks the wiring of each config, not its size
  cfg.model.ae_channels, cfg.model.unet_channels, cfg.model.emb = (4, 8), (8, 16), 16
  cfg.model.latent = 2
  setup, state = trainer.init_state(cfg)
  assert 1 <= cfg.schedule.sample_steps <= cfg.schedule.steps
  x = jnp.ones((2, 16, 16))
  batch = {"clean": x, "corrupted": x, "n4_corrected": x, "n4_log_field": 0 * x, "mask": x}
  out = trainer.restore_batch(setup, state, batch, jax.random.key(0), k=cfg.schedule.sample_steps)
  assert out.shape == (2, 16, 16) and bool(jnp.all(jnp.isfinite(out)))
  assert (setup.ae_def is None) == (cfg.model.space == "pixel")
  assert setup.schedule.kind in diffusion.KINDS
