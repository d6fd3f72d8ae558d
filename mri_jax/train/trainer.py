"""Training of the restorer: autoencoder stage, latent-diffusion stage, then (with
`model.fidelity`) the fidelity-path stage, then (with `train.joint_steps`) the joint stage; data parallel with `jax.jit` over a mesh. This file
holds the losses, the jitted train and validation steps and the loop; the networks come from
`mri_jax.models.restorer`, the state from `train_state`, checkpoints from `mri_jax.checkpoints`,
logs and PNGs from `writers`.

`train(config, workdir)` runs the stages for `train.ae_steps` + `train.diffusion_steps` (+
`train.fidelity_steps` + `train.joint_steps`) global steps (a step counter shared by the stages),
resuming from the latest checkpoint in `workdir`. The joint stage trains the UNet and the fidelity
path together on the network's restored image (the configured K sampler steps, then the frozen
decoder with the path at weight 1, as the fidelity stage trains it; before restore's own N4,
low-frequency fix, blend and clamp) against the clean image, L1 + w·(1 − SSIM). The earlier stages train each network on
its own target (the latent diffusion loss, the decoder's path from a fixed latent); this one trains
them for the output. It starts from the UNet's EMA weights (what the fidelity path was trained
with) and keeps the EMA copy equal to the trained weights, so the exported UNet and path match. The batch is a globally sharded `jax.Array` on the mesh's 'data'
axis and parameters are replicated, so one jitted step computes the global-batch loss and XLA
inserts the gradient all-reduce (what `pmap` + `pmean` did). The per-step RNG is
`fold_in(key(seed), step)`: never per device, so 1 device and 8 devices see the same randomness
for the same global batch.

Checkpoints (orbax): the whole `TrainState` (both networks, optimiser states, EMA weights, step),
stored by name, plus the grain iterator state, every `checkpoint_every` steps and at the end,
keeping `keep` of them. A killed run restarted with the same config continues where the last
checkpoint left it (its log cut back to that step) and ends with the same weights as an
uninterrupted run.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from jax.sharding import NamedSharding, PartitionSpec

from mri_jax import checkpoints, diffusion, metrics
from mri_jax.data import pipeline
from mri_jax.errors import UserInputError
from mri_jax.io import nifti
from mri_jax.models import fidelity
from mri_jax.models.restorer import Restorer, downsampling, normalise_batch
from mri_jax.train import writers
from mri_jax.train.train_state import TrainState, fidelity_steps, init_state, joint_steps, optimisers


@dataclasses.dataclass
class Setup:
  """The static parts of a run: config, the restorer (networks, schedule) and the optimisers."""

  cfg: ml_collections.ConfigDict
  restorer: Restorer
  tx_ae: optax.GradientTransformation
  tx_unet: optax.GradientTransformation
  tx_fid: optax.GradientTransformation
  tx_joint: optax.GradientTransformation


def make_setup(cfg) -> tuple[Setup, TrainState]:
  """(Setup, initial train state) from `cfg` (parameters from `cfg.seed`)."""
  restorer, state = init_state(cfg)
  return Setup(cfg, restorer, *optimisers(cfg)), state


# --------------------------------------------------------------------------------------------
# Losses and steps
# --------------------------------------------------------------------------------------------
def compute_dtype(cfg):
  """The forward-pass dtype (`train.compute_dtype`): float32, or bfloat16 for mixed precision."""
  name = cfg.train.get("compute_dtype", "float32")
  if name not in ("float32", "bfloat16"):
    raise UserInputError(f"train.compute_dtype must be 'float32' or 'bfloat16', not {name!r}")
  return jnp.dtype(name)


def _cast(tree, dtype):
  """Floating leaves of `tree` in `dtype` (float32 master weights → the forward pass's copy)."""
  return jax.tree.map(lambda x: x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x, tree)


def _image_loss(out, clean, mask, ssim_weight) -> tuple[jax.Array, dict]:
  """L1 + ssim_weight·(1 − SSIM) of images `out` against `clean`, both (B, X, Y); (loss, metrics)."""
  l1 = jnp.mean(jnp.abs(out - clean))
  ssim = jnp.mean(jax.vmap(metrics.ssim)(out, clean, jnp.ones_like(mask)))
  loss = l1 + ssim_weight * (1.0 - ssim)
  return loss, {"loss": loss, "l1": l1, "ssim": ssim}


def ae_loss(setup, params, batch, key):
  """Autoencoder loss on the clean images: L1 + w·(1 − SSIM) + KL weight · KL; (loss, metrics)."""
  cfg = setup.cfg.loss
  clean, _, _, _, mask = normalise_batch(batch)
  dt = compute_dtype(setup.cfg)
  rec, mean, logvar = setup.restorer.autoencoder(_cast(params, dt))(clean.astype(dt), key)
  rec, mean, logvar = (a.astype(jnp.float32) for a in (rec, mean, logvar))
  loss, m = _image_loss(rec[..., 0], clean[..., 0], mask, cfg.ssim_weight)
  kl = 0.5 * jnp.mean(mean ** 2 + jnp.exp(logvar) - 1.0 - logvar)
  loss = loss + cfg.kl_weight * kl
  return loss, {**m, "loss": loss, "kl": kl}


def diffusion_loss(setup, params, ae_params, batch, key):
  """x0-prediction MSE of the latent UNet at a random step t of the schedule; (loss, metrics)."""
  r = setup.restorer
  clean, corrupted, n4, log_field, _ = normalise_batch(batch)
  z0 = jax.lax.stop_gradient(r.encode(ae_params, clean))
  zy, cond = jax.lax.stop_gradient(r.conditioning(ae_params, corrupted, n4, log_field))
  k_t, k_n = jax.random.split(key)
  b = z0.shape[0]
  sch = r.schedule
  t = jax.random.randint(k_t, (b,), 1, sch.steps + 1)
  xt = diffusion.q_sample(sch, z0, zy, t, jax.random.normal(k_n, z0.shape))
  dt = compute_dtype(setup.cfg)
  pred = r.unet(_cast(params, dt))(xt.astype(dt), t, diffusion.noise_level(sch, t).astype(dt),
                                  cond.astype(dt)).astype(jnp.float32)
  loss = jnp.mean((pred - z0) ** 2)
  return loss, {"loss": loss}


def fidelity_loss(setup, params, state: TrainState, batch, key):
  """The fidelity path's loss: the decoder (frozen) with the path's features of the input pixels,
  from the UNet's restored latent (EMA weights, the configured K, no gradient) → the clean image:
  L1 + w·(1 − SSIM); (loss, metrics)."""
  r, cfg = setup.restorer, setup.cfg
  clean, corrupted, n4, log_field, mask = normalise_batch(batch)
  frozen = {"ae": state.ae, "unet": state.ema_unet}
  z = jax.lax.stop_gradient(r.restored_latent(frozen, corrupted, n4, log_field, key,
                                              k=int(cfg.schedule.sample_steps)))
  dt = compute_dtype(cfg)
  pixels = fidelity.pixels(corrupted, n4, log_field)
  out = r.decode(_cast(state.ae, dt), z.astype(dt), _cast(params, dt), pixels.astype(dt), 1.0).astype(jnp.float32)
  return _image_loss(out[..., 0], clean[..., 0], mask, cfg.loss.ssim_weight)


def joint_loss(setup, params, state: TrainState, batch, key):
  """The joint stage's loss: the restored image (K = `schedule.sample_steps` sampler steps of the
  UNet `params["unet"]`, then the frozen decoder with the fidelity path `params["fid"]` at weight 1)
  against the clean image: L1 + w·(1 − SSIM); (loss, metrics)."""
  r, cfg = setup.restorer, setup.cfg
  clean, corrupted, n4, log_field, mask = normalise_batch(batch)
  dt = compute_dtype(cfg)
  p = {"ae": _cast(state.ae, dt), "unet": _cast(params["unet"], dt), "fid": _cast(params["fid"], dt)}
  out = r.restore(p, corrupted.astype(dt), n4.astype(dt), log_field.astype(dt), key,
                  k=int(cfg.schedule.sample_steps), fidelity_weight=1.0).astype(jnp.float32)
  return _image_loss(out, clean[..., 0], mask, cfg.loss.ssim_weight)


def _ema(ema, params, decay):
  return jax.tree.map(lambda e, p: decay * e + (1.0 - decay) * p, ema, params)


def make_steps(setup: Setup):
  """Jitted {stage: step} for 'ae', 'diffusion', 'fidelity', 'joint': (state, batch, key) → (state, metrics)."""

  @jax.jit
  def ae_step(state: TrainState, batch, key):
    (_, m), g = jax.value_and_grad(lambda p: ae_loss(setup, p, batch, key), has_aux=True)(state.ae)
    updates, opt = setup.tx_ae.update(g, state.opt_ae, state.ae)
    return state.replace(ae=optax.apply_updates(state.ae, updates), opt_ae=opt, step=state.step + 1), m

  @jax.jit
  def diffusion_step(state: TrainState, batch, key):
    loss_fn = lambda p: diffusion_loss(setup, p, state.ae, batch, key)
    (_, m), g = jax.value_and_grad(loss_fn, has_aux=True)(state.unet)
    updates, opt = setup.tx_unet.update(g, state.opt_unet, state.unet)
    unet = optax.apply_updates(state.unet, updates)
    return state.replace(unet=unet, opt_unet=opt, ema_unet=_ema(state.ema_unet, unet, setup.cfg.train.ema),
                         step=state.step + 1), m

  @jax.jit
  def fidelity_step(state: TrainState, batch, key):
    loss_fn = lambda p: fidelity_loss(setup, p, state, batch, key)
    (_, m), g = jax.value_and_grad(loss_fn, has_aux=True)(state.fid)
    updates, opt = setup.tx_fid.update(g, state.opt_fid, state.fid)
    return state.replace(fid=optax.apply_updates(state.fid, updates), opt_fid=opt, step=state.step + 1), m

  @jax.jit
  def joint_step(state: TrainState, batch, key):
    loss_fn = lambda p: joint_loss(setup, p, state, batch, key)
    params = {"unet": state.unet, "fid": state.fid}
    (_, m), g = jax.value_and_grad(loss_fn, has_aux=True)(params)
    updates, opt = setup.tx_joint.update(g, state.opt_joint, params)
    new = optax.apply_updates(params, updates)
    return state.replace(unet=new["unet"], ema_unet=new["unet"], fid=new["fid"], opt_joint=opt,
                         step=state.step + 1), m

  return {"ae": ae_step, "diffusion": diffusion_step, "fidelity": fidelity_step, "joint": joint_step}


def _mean_scores(x, ref, mask, prefix):
  s = jax.vmap(metrics.masked_scores)(x, ref, mask)
  return {f"{prefix}_ssim": jnp.mean(s["ssim"]), f"{prefix}_psnr": jnp.mean(s["psnr"])}


def make_eval(setup: Setup):
  """Jitted validation: (state, batch, key) → (scores, images) for the autoencoder stage
  (reconstruction of the clean image: the restorer's ceiling) and for the diffusion stage
  (restored with the configured K vs clean, next to the corrupted input and N4)."""

  r = setup.restorer

  @jax.jit
  def ae_eval(state: TrainState, batch, key):
    clean, _, _, _, mask = normalise_batch(batch)
    rec = r.decode(state.ae, r.encode(state.ae, clean))[..., 0]
    return _mean_scores(rec, clean[..., 0], mask, "ae"), {"reconstructed": rec, "clean": clean[..., 0]}

  @jax.jit
  def diffusion_eval(state: TrainState, batch, key):
    clean, corrupted, n4, _, mask = normalise_batch(batch)
    out = restore_batch(setup, state, batch, key, k=int(setup.cfg.schedule.sample_steps))
    scores = {**_mean_scores(out, clean[..., 0], mask, "restored"),
              **_mean_scores(corrupted[..., 0], clean[..., 0], mask, "corrupted"),
              **_mean_scores(n4[..., 0], clean[..., 0], mask, "n4")}
    return scores, {"corrupted": corrupted[..., 0], "N4": n4[..., 0], "restored": out, "clean": clean[..., 0]}

  return {"ae": ae_eval, "diffusion": diffusion_eval, "fidelity": diffusion_eval, "joint": diffusion_eval}


# --------------------------------------------------------------------------------------------
# The loop
# --------------------------------------------------------------------------------------------
_TRAIN_FIELDS = ("clean", "corrupted", "n4_corrected", "n4_log_field", "mask")  # what a step reads


def _check_data(cfg, source, n_devices: int) -> None:
  example = source[0]
  shape = tuple(np.asarray(example["clean"]).shape)
  if len(shape) != 2:
    raise UserInputError(f"the restorer trains on 2-D slices; dataset {cfg.data.name} holds shape {shape}")
  factor = downsampling(cfg)
  if any(n % factor for n in shape):
    raise UserInputError(f"slices {shape} are not divisible by the model's downsampling {factor}")
  if cfg.train.batch % n_devices:
    raise UserInputError(f"batch {cfg.train.batch} is not divisible by {n_devices} devices")
  if len(source) < cfg.train.batch:
    raise UserInputError(f"dataset {cfg.data.name} has {len(source)} training examples, fewer than "
                         f"one batch ({cfg.train.batch})")


def _replicate(tree, mesh):
  return jax.device_put(tree, NamedSharding(mesh, PartitionSpec()))


def restore_batch(setup: Setup, state: TrainState, batch: dict, key: jax.Array, *, k: int = 1,
                  ema: bool = True, stochastic_eta: float = 0.0) -> jax.Array:
  """Restored images (B, X, Y) of a record batch, normalised to foreground mean 1, with K sampler
  steps (the EMA UNet unless `ema=False`)."""
  _, corrupted, n4, log_field, _ = normalise_batch(batch)
  params = {"ae": state.ae, "unet": state.ema_unet if ema else state.unet, "fid": state.fid}
  return setup.restorer.restore(params, corrupted, n4, log_field, key, k=k, stochastic_eta=stochastic_eta)


# What a run given to `init_from` must share with the new config (everything its first two stages
# depend on); the fidelity path's own settings, N4's iterations (used at inference only: training
# reads N4 images from the records), the joint stage's, data_dir, logging and checkpointing may
# differ. When the fidelity path's settings are shared too, the new run starts at the joint stage.
_SHARED_STAGES = ("seed", "data.name", "data.process_sharding", "schedule", "optimizer", "loss",
                  "train.ae_steps", "train.diffusion_steps", "train.batch", "train.ema", "train.compute_dtype")
_NOT_SHARED_MODEL = ("n4_iterations",)
# The fields `init_from` copies when starting at each stage.
_START_FIELDS = {"fidelity": ("ae", "opt_ae", "unet", "ema_unet", "opt_unet"),
                 "joint": ("ae", "opt_ae", "unet", "ema_unet", "opt_unet", "fid", "opt_fid")}


def stage_ends(cfg, restorer: Restorer) -> dict[str, int]:
  """{stage: the global step at which it ends}, in training order (a stage of 0 steps ends where
  the previous one does; no autoencoder stage in pixel space)."""
  ends = {"ae": int(cfg.train.ae_steps) if restorer.ae_def is not None else 0}
  ends["diffusion"] = ends["ae"] + int(cfg.train.diffusion_steps)
  ends["fidelity"] = ends["diffusion"] + fidelity_steps(cfg)
  ends["joint"] = ends["fidelity"] + joint_steps(cfg)
  return ends


def begin_step(state: TrainState, step: int, stage: str, ends: dict[str, int]) -> TrainState:
  """The state a step of `stage` at global `step` starts from: at the joint stage's first step the
  UNet is replaced by its EMA copy (what the fidelity path was trained with)."""
  if stage == "joint" and step == ends["fidelity"]:
    return state.replace(unet=state.ema_unet)
  return state


def _unet_end(cfg) -> int:
  """The global step at which the UNet stage ends."""
  return (int(cfg.train.ae_steps) if cfg.model.space == "latent" else 0) + int(cfg.train.diffusion_steps)


def _pick(c, name):
  for part in name.split("."):
    c = c.get(part) if hasattr(c, "get") else None
  return c.to_dict() if hasattr(c, "to_dict") else c


def _differ(src, cfg, names) -> list[str]:
  return [n for n in names if json.dumps(_pick(src, n), sort_keys=True, default=list)
          != json.dumps(_pick(cfg, n), sort_keys=True, default=list)]


def _check_init_from(cfg, run) -> tuple[Path, str, int, int]:
  """(RUN, the stage the new run starts at ('fidelity' or 'joint'), its global start step, RUN's
  checkpoint step whose weights it takes), or refuses (one line) a run this config cannot start
  from; nothing is read but RUN's config.json and its checkpoint steps."""
  run = Path(run)
  if not fidelity_steps(cfg) and not joint_steps(cfg):
    raise UserInputError("--init-from starts the fidelity or the joint stage, but this config has none "
                         "(model.fidelity off or train.fidelity_steps 0, and train.joint_steps 0)")
  src = checkpoints.read_config(run)
  names = list(_SHARED_STAGES) + [f"model.{k}" for k in cfg.model
                                  if not k.startswith("fidelity") and k not in _NOT_SHARED_MODEL]
  differ = _differ(src, cfg, names)
  if differ:
    raise UserInputError(f"--init-from '{run}': its config differs from this one in {', '.join(differ)} "
                         "(only the fidelity path's and the joint stage's settings may differ)")
  # the path's training (its inference-only weight aside) and its steps
  fid_names = [f"model.{k}" for k in cfg.model if k.startswith("fidelity") and k != "fidelity_weight"]
  unet_end = _unet_end(cfg)
  if joint_steps(cfg) and not _differ(src, cfg, fid_names) and fidelity_steps(src) == fidelity_steps(cfg):
    stage, step = "joint", unet_end + fidelity_steps(cfg)
  elif fidelity_steps(cfg):
    stage, step = "fidelity", unet_end
  else:
    raise UserInputError(f"--init-from '{run}': its fidelity path differs from this config's, which has no "
                         "fidelity stage to retrain it")
  # RUN's weights are those of a run from scratch at `step` only up to the end of its own fidelity
  # stage: its joint stage (if any) changes the UNet and the path.
  last = unet_end + fidelity_steps(src)
  usable = [s for s in checkpoints.all_steps(run) if step <= s <= last]
  if not usable:
    raise UserInputError(f"--init-from '{run}': it has no checkpoint from step {step} (the start of the {stage} "
                         f"stage) to step {last} (the end of its fidelity stage); latest "
                         f"{checkpoints.latest_step(run)}")
  return run, stage, step, usable[-1]


def _start_from_run(state: TrainState, stage: str, step: int, run: Path, run_step: int, it) -> TrainState:
  """The state at global step `step` (the start of `stage`) with the fields `_START_FIELDS[stage]`
  of `run`'s checkpoint `run_step` (the stages between `step` and `run_step` change none of them);
  advances the data iterator `it` by `step` batches, to the position a run from scratch has there."""
  c = checkpoints.Checkpointer(run / "checkpoints")
  try:
    named = c.restore_named(run_step)
  finally:
    c.close()
  fields = {f: checkpoints.from_named(getattr(state, f), named.get(f, {}), f"--init-from '{run}'")
            for f in _START_FIELDS[stage] if getattr(state, f) is not None}
  for _ in range(step):
    next(it)
  return state.replace(step=jnp.asarray(step, jnp.int32), **fields)


# Model settings a warm-start source may differ in (used at inference only).
_WARM_FREE_MODEL = ("n4_iterations", "fidelity_weight")


def _check_warm_start(cfg, source) -> tuple[Path, dict]:
  """(`source`, its inference weights {"ae", "unet", "fid"}) for exported weights or a run's
  workdir whose networks have this config's shapes, or a one-line refusal (a config that differs,
  weights that do not load) before anything is written."""
  source = Path(source)
  if not source.is_dir():
    raise UserInputError(f"--warm-start '{source}' is not a directory (give a run's workdir or a folder "
                         "written by `mri-jax export-weights`)")
  src = checkpoints.read_config(source)
  differ = _differ(src, cfg, [f"model.{k}" for k in cfg.model if k not in _WARM_FREE_MODEL])
  if differ:
    raise UserInputError(f"--warm-start '{source}': its networks differ from this config's in {', '.join(differ)}")
  from mri_jax import restore  # noqa: PLC0415 (restore imports the models; only needed here)

  return source, restore.load_model(source).params


def _warm_start(state: TrainState, params: dict) -> TrainState:
  """`state` with the networks `params` (`_check_warm_start`) in place of the random ones (the
  UNet and its EMA copy both from the source's EMA UNet); optimisers, step and data position stay
  at their start."""
  cast = lambda new, old: None if old is None else jax.tree.map(lambda x, t: jnp.asarray(x, t.dtype), new, old)  # noqa: E731
  unet = cast(params["unet"], state.unet)
  return state.replace(ae=cast(params["ae"], state.ae), unet=unet, ema_unet=unet, fid=cast(params["fid"], state.fid))


def train(cfg: ml_collections.ConfigDict, workdir, *, stop_after: int | None = None, log=print,
          devices=None, init_from=None, warm_start=None) -> dict:
  """Trains (or resumes) the configured run in `workdir`; returns the final metrics.

  Args:
    stop_after: stop (after checkpointing) once this global step is reached — for tests that
      emulate a killed run.
    devices: devices of the data mesh (default: all devices of all processes).
    init_from: a finished run's workdir whose autoencoder and UNet stages this config repeats
      (same seed, data, networks, schedule, optimiser and step counts; only the fidelity path and
      the joint stage may differ): a new `workdir` starts at the fidelity stage (or, when the
      fidelity path's settings are the same too, at the joint stage) with its weights and the data
      position it would have reached — the state a run from scratch has there, without retraining.
    warm_start: exported weights (`mri-jax export-weights`, e.g. the shipped default) or a run's
      workdir with networks of this config's shapes: a new `workdir` starts at step 0 with those
      networks instead of random ones (fine-tuning, e.g. on other data; optimisers start afresh)
      and trains every stage of the config (a stage of 0 steps keeps its network as loaded).

  Returns:
    {"final": last logged metrics, "history": logged rows, "state": TrainState, "setup": Setup}.
  """
  # ---- checks that need no compilation: nothing is written before they pass
  workdir = nifti.check_folder(Path(workdir).resolve(), "--workdir")
  lead = jax.process_index() == 0  # multi-host: process 0 writes logs, event files and PNGs
  if not lead:
    log = lambda message: None  # noqa: E731
  data_dir = cfg.data.data_dir or None
  compute_dtype(cfg)
  if int(cfg.train.batch) < 1:
    raise UserInputError(f"train.batch must be a positive number of examples, got {cfg.train.batch}")
  sharding = cfg.data.process_sharding
  if sharding not in pipeline.PROCESS_SHARDINGS:
    raise UserInputError(f"data.process_sharding must be one of {pipeline.PROCESS_SHARDINGS}, not {sharding!r}")
  try:
    source = pipeline.data_source(cfg.data.name, "train", data_dir=data_dir)
  except Exception as err:  # TFDS raises several types for a missing / unbuilt dataset
    raise UserInputError(f"cannot read dataset {cfg.data.name} under data_dir '{data_dir or '(TFDS default)'}' "
                         f"({type(err).__name__}); build it with `mri-jax build-data`") from None
  mesh = pipeline.data_mesh(devices)
  _check_data(cfg, source, len(mesh.devices.ravel()))
  eval_every = int(cfg.train.eval_every)
  if eval_every:
    try:
      val_source = pipeline.data_source(cfg.data.name, "validation", data_dir=data_dir)
    except Exception as err:
      raise UserInputError(f"dataset {cfg.data.name} has no validation split ({type(err).__name__}); "
                           "set --config.train.eval_every=0 to train without validation") from None
  if init_from is not None and warm_start is not None:
    raise UserInputError("--init-from and --warm-start exclude each other (give one)")
  if init_from is not None:
    init_from, init_stage, init_start, init_step = _check_init_from(cfg, init_from)
  if warm_start is not None:
    warm_start, warm_params = _check_warm_start(cfg, warm_start)
  writers.check_workdir(json.loads(cfg.to_json_best_effort()), workdir, write=lead)

  # ---- data, networks, state (resumed from the latest checkpoint)
  loader = pipeline.make_loader(cfg.data.name, "train", data_dir=data_dir, global_batch=cfg.train.batch,
                                seed=cfg.seed, source=source, process_sharding=sharding,
                                fields=_TRAIN_FIELDS)
  it = iter(loader)
  setup, state = make_setup(cfg)
  steps = make_steps(setup)
  if eval_every:
    evals = make_eval(setup)
    val_loader = pipeline.make_loader(cfg.data.name, "validation", data_dir=data_dir, global_batch=cfg.train.batch,
                                      seed=cfg.seed, source=val_source, shuffle=False, allow_small=True,
                                      process_sharding=sharding, fields=_TRAIN_FIELDS)
  # The stages in order, each ending at a global step.
  ends = stage_ends(cfg, setup.restorer)
  total = ends["joint"]

  def stage_of(step: int) -> str:
    return next(name for name, end in ends.items() if step < end)

  ckpt = checkpoints.Checkpointer(workdir / "checkpoints", keep=cfg.train.keep, every=cfg.train.checkpoint_every)
  latest = ckpt.latest_step()  # None: a new run (a fine-tune's first checkpoint is step 0)
  start = latest or 0
  if init_from is not None and latest is None:
    start = init_start
    state = _start_from_run(state, init_stage, start, init_from, init_step, it)
    ckpt.save(start, state, data_iterator=it)  # a restart without --init-from resumes here
    if lead:
      writers.truncate_log(workdir, start)
    nets = "autoencoder and UNet" if init_stage == "fidelity" else "autoencoder, UNet and fidelity path"
    log(f"started at step {start} ({init_stage} stage) with the {nets} of {init_from}")
  elif warm_start is not None and latest is None:
    state = _warm_start(state, warm_params)
    ckpt.save(0, state, data_iterator=it)  # a restart without --warm-start resumes from these weights
    log(f"started at step 0 with the networks of {warm_start}")
  elif latest is not None:
    if init_from is not None or warm_start is not None:
      log(f"--{'init-from' if init_from is not None else 'warm-start'} ignored: {workdir} already holds a run "
          "(resuming it)")
    state = ckpt.restore(start, state, data_iterator=it)
    if lead:
      writers.truncate_log(workdir, start)  # steps logged after that checkpoint are logged again
    log(f"resumed from step {start}")
  state = _replicate(state, mesh)
  base = jax.random.key(cfg.seed)
  history = []
  t0, last = time.perf_counter(), None
  writer = writers.MetricWriter(workdir, tensorboard=bool(cfg.train.tensorboard)) if lead else writers.NullWriter()

  def validate(done: int, stage: str) -> dict:
    """Scores averaged over the first `eval_batches` validation batches; PNG grid of the first."""
    fn = evals[stage]
    vit = iter(val_loader)
    totals, grid = {}, None
    n = int(cfg.train.eval_batches)
    for b in range(n):
      scores, images = fn(state, pipeline.to_global(next(vit), mesh), jax.random.fold_in(jax.random.fold_in(base, 2 ** 31 - 1), b))
      for k, v in scores.items():
        totals[k] = totals.get(k, 0.0) + float(v) / n
      if grid is None:
        if jax.process_count() > 1:  # the batch is spread over processes: gather it for the grid
          from jax.experimental import multihost_utils

          images = multihost_utils.process_allgather(images, tiled=True)
        grid = writers.image_grid(images)
    writer.write_scalars(done, totals, stage=f"eval_{stage}")
    writer.write_images(done, {f"eval_{stage}/{' | '.join(images)}": grid})
    if lead:
      writers.save_png(workdir / "samples" / f"step_{done:07d}_{stage}.png", grid)
    log(f"eval at step {done} [{stage}] " + " ".join(f"{k} {v:.4g}" for k, v in totals.items()))
    return totals

  # ---- the loop
  try:
    for step in range(start, total):
      batch = pipeline.to_global(next(it), mesh)
      key = jax.random.fold_in(base, step)
      stage = stage_of(step)
      state, m = steps[stage](begin_step(state, step, stage, ends), batch, key)
      done = step + 1
      if done % cfg.train.log_every == 0 or done == total or done == stop_after:
        m = {k: float(v) for k, v in m.items()}
        if not np.isfinite(m["loss"]):
          raise FloatingPointError(f"{stage} loss is {m['loss']} at step {done}; lower the learning rate "
                                   "or check the data")
        rate = (done - start) / (time.perf_counter() - t0)
        log(f"step {done}/{total} [{stage}] " + " ".join(f"{k} {v:.4g}" for k, v in m.items())
            + f" | {rate:.2f} steps/s, ETA {(total - done) / max(rate, 1e-9):.0f} s")
        writer.write_scalars(done, m, stage=stage)
        history.append({"step": done, "stage": stage, **m})
        last = m
      if eval_every and (done % eval_every == 0 or done == ends[stage]):
        history.append({"step": done, "stage": f"eval_{stage}", **validate(done, stage)})
      if done % cfg.train.checkpoint_every == 0 or done == total or done == stop_after:
        ckpt.save(done, state, data_iterator=it)
      if stop_after is not None and done >= stop_after:
        break
  finally:
    writer.close()
    ckpt.close()
  return {"final": last, "history": history, "state": state, "setup": setup}
