"""Training on the tiny config: loss decreases, 1 vs 8 devices agree, kill-and-resume is exact,
checkpoints are keyed by name, and every packaged config builds its restorer."""

import json

import jax
import numpy as np
import pytest

from mri_jax import checkpoints, config, train
from mri_jax.errors import UserInputError
from tests.conftest import tiny_config as _cfg


def _leaves(state):
  return [np.asarray(x) for x in jax.tree.leaves(state)]


@pytest.mark.xdist_group("full_run")  # trained once: see conftest.full_run
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


@pytest.mark.xdist_group("full_run")  # trained once: see conftest.full_run
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


@pytest.mark.xdist_group("full_run")  # trained once: see conftest.full_run
def test_killed_and_resumed_run_ends_with_the_same_weights(full_run, tiny_dataset, tmp_path):
  data_dir, _ = tiny_dataset
  workdir = tmp_path / "run"
  first = train.train(_cfg(data_dir), workdir, stop_after=8, log=lambda m: None)  # "killed" after 8
  assert first["history"][-1]["step"] == 8
  with open(workdir / "metrics.jsonl", "a") as f:  # a real kill logs steps past the last checkpoint
    f.write('{"step": 9, "stage": "diffusion", "loss": 1.0}\n{"step": 10, "sta')
  logs = []
  resumed = train.train(_cfg(data_dir), workdir, log=logs.append)
  assert logs[0] == "resumed from step 8"
  for a, b in zip(_leaves(resumed["state"]), _leaves(full_run["state"])):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
  steps = [json.loads(line)["step"] for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  assert steps == list(range(1, 13))


@pytest.mark.xdist_group("full_run")  # trained once: see conftest.full_run
def test_bfloat16_compute_trains_close_to_float32(full_run, tiny_dataset, tmp_path):
  data_dir, _ = tiny_dataset
  out = train.train(_cfg(data_dir, compute_dtype="bfloat16"), tmp_path / "bf16", log=lambda m: None)
  ref = [r["loss"] for r in full_run["history"] if r["stage"] in ("ae", "diffusion")]
  got = [r["loss"] for r in out["history"] if r["stage"] in ("ae", "diffusion")]
  assert len(got) == len(ref) == 12 and np.all(np.isfinite(got))
  np.testing.assert_allclose(got, ref, rtol=0.05)  # same data and keys; bf16 rounding only
  assert np.mean(got[4:6]) < np.mean(got[:2]) and np.mean(got[10:]) < np.mean(got[6:8])
  # master weights stay float32 (what checkpoints and exported weights hold)
  assert {x.dtype for x in jax.tree.leaves(out["state"].unet)} == {np.dtype("float32")}
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
  with pytest.raises(UserInputError, match="train.batch must be a positive"):
    train.train(_cfg(data_dir, batch=0), tmp_path / "zero", log=lambda m: None)
  assert not (tmp_path / "zero").exists()  # nothing written for a refused start
  missing = _cfg(tmp_path / "nothing")
  with pytest.raises(UserInputError, match="build it with"):
    train.train(missing, tmp_path / "m", log=lambda m: None)


@pytest.mark.xdist_group("full_run")  # trained once: see conftest.full_run
def test_checkpoints_are_keyed_by_names(full_run):
  ckpt = checkpoints.Checkpointer(full_run["workdir"] / "checkpoints")
  try:
    saved = ckpt.restore_named(ckpt.latest_step())
  finally:
    ckpt.close()
  assert set(saved) == {"step", "unet", "ema_unet", "opt_unet", "ae", "opt_ae"}
  assert "kernel" in saved["unet"]["conv_in"] and "c1" in saved["ae"]["enc_blocks"]["0"]
  np.testing.assert_array_equal(np.asarray(saved["ema_unet"]["conv_in"]["kernel"]["value"]),
                                np.asarray(full_run["state"].ema_unet["conv_in"]["kernel"][...]))


@pytest.mark.parametrize("spec", ["default.py", "tiny.py", "ablations/no_n4.py", "ablations/ddpm_from_noise.py",
                                  "ablations/ddpm_from_noise.py:cosine", "ablations/rev_warmup.py",
                                  "ablations/pixel_space.py", "ablations/steps_k.py:4", "mixed.py", "mixed.py:joint",
                                  "mixed.py:fine"])
def test_every_config_builds_its_restorer_and_one_step_runs(spec):
  import jax.numpy as jnp

  from mri_jax import diffusion

  cfg = config.load(spec)
  # shrink the networks: this checks the wiring of each config, not its size
  cfg.model.ae_channels, cfg.model.unet_channels, cfg.model.emb = (4, 8), (8, 16), 16
  cfg.model.latent = 2
  setup, state = train.make_setup(cfg)
  assert 1 <= cfg.schedule.sample_steps <= cfg.schedule.steps
  x = jnp.ones((2, 16, 16))
  batch = {"clean": x, "corrupted": x, "n4_corrected": x, "n4_log_field": 0 * x, "mask": x}
  out = train.restore_batch(setup, state, batch, jax.random.key(0), k=cfg.schedule.sample_steps)
  assert out.shape == (2, 16, 16) and bool(jnp.all(jnp.isfinite(out)))
  assert (setup.restorer.ae_def is None) == (cfg.model.space == "pixel") == (state.ae is None)
  assert setup.restorer.schedule.kind in diffusion.KINDS


def test_fidelity_stage_trains_the_path_only_and_exports(tiny_dataset, tmp_path):
  from mri_jax import restore

  data_dir, _ = tiny_dataset
  cfg = config.load("tiny.py:fidelity", [f"--config.data.data_dir={data_dir}", "--config.train.ae_steps=3",
                                         "--config.train.diffusion_steps=3", "--config.train.fidelity_steps=4",
                                         "--config.train.log_every=1", "--config.train.eval_every=0"])
  out = train.train(cfg, tmp_path / "run", log=lambda m: None)
  stages = [r["stage"] for r in out["history"]]
  assert stages == ["ae"] * 3 + ["diffusion"] * 3 + ["fidelity"] * 4
  state = out["state"]
  fuse = [np.abs(np.asarray(x)).max() for x in jax.tree.leaves(state.fid["fuse"])]
  assert max(fuse) > 0  # the zero-initialised fusion has learnt something
  init = train.make_setup(cfg)[1]
  ae_after = [np.asarray(x) for x in jax.tree.leaves(state.ae)]
  run_ae = train.train(config.load("tiny.py:fidelity", [f"--config.data.data_dir={data_dir}",
                                                        "--config.train.ae_steps=3", "--config.train.diffusion_steps=3",
                                                        "--config.train.fidelity_steps=0", "--config.train.log_every=1",
                                                        "--config.train.eval_every=0"]),
                       tmp_path / "no_fid", log=lambda m: None)["state"]
  for a, b in zip(ae_after, jax.tree.leaves(run_ae.ae)):  # the fidelity stage leaves the autoencoder alone
    np.testing.assert_array_equal(a, np.asarray(b))
  assert jax.tree.structure(init.fid) == jax.tree.structure(state.fid)

  # --init-from: the residual path trained on the plain run's autoencoder and UNet ends with the
  # weights a residual run from scratch gets (the first two stages are not repeated)
  residual = ["--config.model.fidelity_residual=True"]
  opts = [f"--config.data.data_dir={data_dir}", "--config.train.ae_steps=3", "--config.train.diffusion_steps=3",
          "--config.train.fidelity_steps=4", "--config.train.log_every=1", "--config.train.eval_every=0"]
  scratch = train.train(config.load("tiny.py:fidelity", opts + residual), tmp_path / "res", log=lambda m: None)
  logs = []
  warm = train.train(config.load("tiny.py:fidelity", opts + residual), tmp_path / "res_warm", log=logs.append,
                     init_from=tmp_path / "no_fid")
  assert any("started at step 6" in m for m in logs)
  assert [r["stage"] for r in warm["history"]] == ["fidelity"] * 4
  for a, b in zip(jax.tree.leaves(scratch["state"]), jax.tree.leaves(warm["state"])):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  assert np.abs(np.asarray(warm["state"].fid["res_gate"]["kernel"])).max() > 0
  # killed right after starting: it checkpointed at the start, so a restart without --init-from
  # resumes the fidelity stage and ends with the same weights
  train.train(config.load("tiny.py:fidelity", opts + residual), tmp_path / "res_killed", log=lambda m: None,
              init_from=tmp_path / "no_fid", stop_after=7)
  resumed = train.train(config.load("tiny.py:fidelity", opts + residual), tmp_path / "res_killed", log=lambda m: None)
  assert [r["stage"] for r in resumed["history"]] == ["fidelity"] * 3
  for a, b in zip(jax.tree.leaves(scratch["state"]), jax.tree.leaves(resumed["state"])):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  with pytest.raises(UserInputError, match="train.ae_steps"):
    train.train(config.load("tiny.py:fidelity", opts + residual + ["--config.train.ae_steps=4"]),
                tmp_path / "res_bad", log=lambda m: None, init_from=tmp_path / "no_fid")
  with pytest.raises(UserInputError, match="has none"):
    train.train(config.load("tiny.py:fidelity", opts + ["--config.train.fidelity_steps=0"]),
                tmp_path / "res_bad", log=lambda m: None, init_from=tmp_path / "no_fid")
  assert not (tmp_path / "res_bad").exists()  # refused before anything is written
  restore.export_weights(tmp_path / "run", tmp_path / "export")
  a, b = restore.load_model(tmp_path / "run"), restore.load_model(tmp_path / "export")
  assert b.params["fid"] is not None
  x = np.random.default_rng(1).uniform(0.1, 1.0, (2, 48, 48)).astype(np.float32)
  np.testing.assert_allclose(restore.restore_array(x, a, axis=0).image, restore.restore_array(x, b, axis=0).image,
                             rtol=1e-6, atol=1e-6)


def test_joint_stage_trains_unet_and_path_for_the_output_and_starts_from_a_run(tiny_dataset, tmp_path):
  data_dir, _ = tiny_dataset
  opts = [f"--config.data.data_dir={data_dir}", "--config.train.ae_steps=3", "--config.train.diffusion_steps=3",
          "--config.train.fidelity_steps=4", "--config.train.log_every=1", "--config.train.eval_every=0",
          "--config.train.checkpoint_every=5", "--config.train.keep=5", "--config.model.fidelity_residual=True"]
  joint = ["--config.train.joint_steps=4"]
  quiet = lambda m: None  # noqa: E731
  scratch = train.train(config.load("tiny.py:fidelity", opts + joint), tmp_path / "scratch", log=quiet)
  assert [r["stage"] for r in scratch["history"]] == ["ae"] * 3 + ["diffusion"] * 3 + ["fidelity"] * 4 + ["joint"] * 4
  assert all(np.isfinite(r["loss"]) and -1 <= r["ssim"] <= 1 for r in scratch["history"] if r["stage"] == "joint")
  plain = train.train(config.load("tiny.py:fidelity", opts), tmp_path / "plain", log=quiet)
  s, p = scratch["state"], plain["state"]
  for a, b in zip(jax.tree.leaves(s.ae), jax.tree.leaves(p.ae)):  # the decoder stays frozen
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  for name in ("unet", "fid"):  # both networks learn from the output's loss
    diff = max(float(np.abs(np.asarray(a) - np.asarray(b)).max())
               for a, b in zip(jax.tree.leaves(getattr(s, name)), jax.tree.leaves(getattr(p, name))))
    assert diff > 0, name
  for a, b in zip(jax.tree.leaves(s.unet), jax.tree.leaves(s.ema_unet)):  # what is exported is what trained
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))

  # killed at the very start of the joint stage: the resumed run switches to the EMA UNet again
  train.train(config.load("tiny.py:fidelity", opts + joint), tmp_path / "killed", log=quiet, stop_after=10)
  resumed = train.train(config.load("tiny.py:fidelity", opts + joint), tmp_path / "killed", log=quiet)
  assert [r["stage"] for r in resumed["history"]] == ["joint"] * 4
  for a, b in zip(jax.tree.leaves(scratch["state"]), jax.tree.leaves(resumed["state"])):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  # a workdir keeps its stages: adding the joint stage in place is refused in one line
  with pytest.raises(UserInputError, match="without a joint stage"):
    train.train(config.load("tiny.py:fidelity", opts + joint), tmp_path / "plain", log=quiet)

  # --init-from a run that stopped after its fidelity stage, or that has a joint stage of its own
  # (its checkpoint at the end of the fidelity stage is used, not its latest): the joint stage alone
  # ends with the weights of the run from scratch
  for source in ("plain", "scratch"):
    logs = []
    warm = train.train(config.load("tiny.py:fidelity", opts + joint), tmp_path / f"warm_{source}", log=logs.append,
                       init_from=tmp_path / source)
    assert any("started at step 10 (joint stage)" in m for m in logs), logs
    assert [r["stage"] for r in warm["history"]] == ["joint"] * 4
    for a, b in zip(jax.tree.leaves(scratch["state"]), jax.tree.leaves(warm["state"])):
      np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  # a run whose checkpoints all come after its own joint stage changed the UNet is refused
  import shutil

  shutil.copytree(tmp_path / "scratch", tmp_path / "late")
  for step in checkpoints.all_steps(tmp_path / "late")[:-1]:
    shutil.rmtree(tmp_path / "late" / "checkpoints" / str(step))
  assert checkpoints.all_steps(tmp_path / "late") == [14]
  with pytest.raises(UserInputError, match="no checkpoint from step 10"):
    train.train(config.load("tiny.py:fidelity", opts + joint), tmp_path / "late_bad", log=quiet,
                init_from=tmp_path / "late")
  assert not (tmp_path / "late_bad").exists()


def test_warm_start_fine_tunes_exported_weights_on_other_settings(tiny_dataset, tmp_path):
  """--warm-start: a new run starts from exported weights (or a run) instead of random networks;
  a stage of 0 steps keeps its network exactly; a killed fine-tune resumes to the same weights."""
  from mri_jax import restore

  data_dir, _ = tiny_dataset
  quiet = lambda m: None  # noqa: E731
  base = [f"--config.data.data_dir={data_dir}", "--config.train.log_every=1", "--config.train.eval_every=0"]
  steps = lambda ae, diff, fid: [f"--config.train.ae_steps={ae}", f"--config.train.diffusion_steps={diff}",  # noqa: E731
                                 f"--config.train.fidelity_steps={fid}"]
  train.train(config.load("tiny.py:fidelity", base + steps(2, 2, 2)), tmp_path / "src", log=quiet)
  restore.export_weights(tmp_path / "src", tmp_path / "weights")
  src = restore.load_model(tmp_path / "weights").params

  # only the UNet stage, at another learning rate: the autoencoder and the path are the source's
  # exactly; the UNet starts from the source's EMA UNet and moves
  fine = base + steps(0, 3, 0) + ["--config.optimizer.lr=3e-4", "--config.train.checkpoint_every=100"]
  logs = []
  out = train.train(config.load("tiny.py:fidelity", fine), tmp_path / "fine", log=logs.append,
                    warm_start=tmp_path / "weights")
  assert any("started at step 0 with the networks of" in m for m in logs), logs
  assert [r["stage"] for r in out["history"]] == ["diffusion"] * 3
  s = out["state"]
  for name, field in (("ae", "ae"), ("fid", "fid")):
    for a, b in zip(jax.tree.leaves(src[name]), jax.tree.leaves(getattr(s, field))):
      np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  moved = max(float(np.abs(np.asarray(a) - np.asarray(b)).max())
              for a, b in zip(jax.tree.leaves(src["unet"]), jax.tree.leaves(s.unet)))
  assert 0 < moved < 0.05  # fine-tuned, not re-initialised
  # from the run's workdir (its latest checkpoint; the EMA UNet, as exported): the same start
  from mri_jax.train import trainer

  fine_cfg = config.load("tiny.py:fidelity", fine)
  fresh = train.make_setup(fine_cfg)[1]
  for a, b in zip(jax.tree.leaves(trainer._warm_start(fresh, trainer._check_warm_start(fine_cfg, tmp_path / "weights")[1])),
                  jax.tree.leaves(trainer._warm_start(fresh, trainer._check_warm_start(fine_cfg, tmp_path / "src")[1]))):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  # killed before its first periodic checkpoint (only the start, step 0, saved): a restart resumes
  # from the loaded networks, with or without --warm-start (given again, it is ignored)
  import shutil

  for flag in (None, tmp_path / "weights"):
    shutil.copytree(tmp_path / "fine", tmp_path / "zero")
    for step in checkpoints.all_steps(tmp_path / "zero"):
      if step:
        shutil.rmtree(tmp_path / "zero" / "checkpoints" / str(step))
    logs = []
    again = train.train(config.load("tiny.py:fidelity", fine), tmp_path / "zero", log=logs.append, warm_start=flag)
    assert any("resumed from step 0" in m for m in logs), logs
    assert [r["stage"] for r in again["history"]] == ["diffusion"] * 3
    for a, b in zip(jax.tree.leaves(s), jax.tree.leaves(again["state"])):
      np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    shutil.rmtree(tmp_path / "zero")
  # killed after one step: a restart without --warm-start resumes and ends with the same weights
  train.train(config.load("tiny.py:fidelity", fine), tmp_path / "killed", log=quiet,
              warm_start=tmp_path / "weights", stop_after=1)
  resumed = train.train(config.load("tiny.py:fidelity", fine), tmp_path / "killed", log=quiet)
  assert [r["stage"] for r in resumed["history"]] == ["diffusion"] * 2
  for a, b in zip(jax.tree.leaves(s), jax.tree.leaves(resumed["state"])):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))

  # refusals, before anything is written: other network shapes, both flags, not a folder
  with pytest.raises(UserInputError, match="model.fidelity"):
    train.train(config.load("tiny.py", base + ["--config.train.ae_steps=0"]), tmp_path / "bad", log=quiet,
                warm_start=tmp_path / "weights")
  with pytest.raises(UserInputError, match="exclude each other"):
    train.train(config.load("tiny.py:fidelity", fine), tmp_path / "bad", log=quiet,
                warm_start=tmp_path / "weights", init_from=tmp_path / "src")
  with pytest.raises(UserInputError, match="not a directory"):
    train.train(config.load("tiny.py:fidelity", fine), tmp_path / "bad", log=quiet,
                warm_start=tmp_path / "nowhere")
  assert not (tmp_path / "bad").exists()


def test_the_shipped_weights_fit_the_fine_tuning_config():
  """`configs/mixed.py:fine` is meant for --warm-start from the shipped weights: their networks match."""
  from mri_jax import restore
  from mri_jax.train import trainer

  cfg = config.load("mixed.py:fine")
  assert cfg.data.name == "mri_pairs/mixed128fine"
  assert trainer._check_warm_start(cfg, restore.WEIGHTS_DIR)[0] == restore.WEIGHTS_DIR
