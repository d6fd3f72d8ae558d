"""Training: autoencoder stage, then latent-diffusion stage; data parallel with `jax.jit` over a mesh.

`train(config, workdir)` runs both stages for `config.train.ae_steps` + `config.train.diffusion_steps`
global steps (a step counter shared by the stages), resuming from the latest checkpoint in
`workdir`. The batch is a globally sharded `jax.Array` on the mesh's 'data' axis and parameters
are replicated, so one jitted step computes the global-batch loss and XLA inserts the gradient
all-reduce (what `pmap` + `pmean` did). The per-step RNG is `fold_in(key(seed), step)`: never per
device, so 1 device and 8 devices see the same randomness for the same global batch.

Checkpoints (orbax `CheckpointManager`): the whole train state (both networks, optimiser states,
EMA weights, step) plus the grain iterator state, every `checkpoint_every` steps and at the end,
keeping `keep` of them. A killed run restarted with the same config continues where the last
checkpoint left it and ends with the same weights as an uninterrupted run.
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
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec

from mri_jax import diffusion, metrics
from mri_jax.data import pipeline
from mri_jax.errors import UserInputError
from mri_jax.models import Autoencoder, UNet


# --------------------------------------------------------------------------------------------
# Models and state
# --------------------------------------------------------------------------------------------
def latent_channels(cfg) -> int:
  """Channels of the space the UNet denoises: the latent, or 1 in pixel space."""
  return 1 if cfg.model.space == "pixel" else cfg.model.latent


def downsampling(cfg) -> int:
  """Total spatial downsampling of the restorer (UNet levels × autoencoder in latent space)."""
  f = 2 ** (len(cfg.model.unet_channels) - 1)
  return f * (2 ** (len(cfg.model.ae_channels) - 1) if cfg.model.space == "latent" else 1)


def cond_channels(cfg) -> int:
  """Channels of the UNet's conditioning stack."""
  c = latent_channels(cfg)
  return c + (c + 1 if cfg.model.condition_n4 else 0)  # corrupted [+ N4 image + N4 log field]


def build_models(cfg, seed: int):
  """(autoencoder or None for pixel space, UNet) with parameters from `seed`."""
  rngs = nnx.Rngs(seed)
  ae = None
  if cfg.model.space == "latent":
    ae = Autoencoder(channels=tuple(cfg.model.ae_channels), latent=cfg.model.latent, rngs=rngs)
  unet = UNet(in_channels=latent_channels(cfg) + cond_channels(cfg), out_channels=latent_channels(cfg),
              channels=tuple(cfg.model.unet_channels), emb=cfg.model.emb, rngs=rngs)
  return ae, unet


def make_tx(cfg_opt, steps: int) -> optax.GradientTransformation:
  """AdamW with linear warm-up and cosine decay, global-norm clipping."""
  steps = max(int(steps), 1)
  warmup = min(int(cfg_opt.warmup), max(steps - 1, 0))
  lr = optax.warmup_cosine_decay_schedule(0.0, cfg_opt.lr, warmup, steps, cfg_opt.lr * cfg_opt.final_lr_fraction)
  return optax.chain(optax.clip_by_global_norm(cfg_opt.clip), optax.adamw(lr, weight_decay=cfg_opt.weight_decay))


@dataclasses.dataclass
class Setup:
  """The static parts of a run: config, schedule, network graph definitions and optimisers."""

  cfg: ml_collections.ConfigDict
  schedule: diffusion.Schedule
  ae_def: object
  unet_def: object
  tx_ae: optax.GradientTransformation
  tx_unet: optax.GradientTransformation


def init_state(cfg) -> tuple[Setup, dict]:
  """(Setup, initial train state: parameters, optimiser states, EMA weights, step) from `cfg.seed`."""
  ae, unet = build_models(cfg, cfg.seed)
  unet_def, unet_params = nnx.split(unet, nnx.Param)
  state = {"step": jnp.asarray(0, jnp.int32), "unet": unet_params, "ema_unet": unet_params}
  ae_def = None
  tx_ae = make_tx(cfg.optimizer, cfg.train.ae_steps)
  tx_unet = make_tx(cfg.optimizer, cfg.train.diffusion_steps)
  if ae is not None:
    ae_def, ae_params = nnx.split(ae, nnx.Param)
    state.update(ae=ae_params, opt_ae=tx_ae.init(ae_params))
  state["opt_unet"] = tx_unet.init(unet_params)
  sched = diffusion.make_schedule(cfg.schedule.kind, cfg.schedule.steps, kappa=cfg.schedule.kappa)
  return Setup(cfg, sched, ae_def, unet_def, tx_ae, tx_unet), state


# --------------------------------------------------------------------------------------------
# Losses and steps
# --------------------------------------------------------------------------------------------
def _prep(batch):
  """Per-example normalisation by the foreground mean; NHWC."""
  mask = batch["mask"] > 0
  norm = jax.vmap(metrics.normalise)
  clean = norm(batch["clean"], mask)
  corrupted = norm(batch["corrupted"], mask)
  n4 = norm(batch["n4_corrected"], mask)
  return clean[..., None], corrupted[..., None], n4[..., None], batch["n4_log_field"][..., None], mask


def _pool(x, f):
  if f == 1:
    return x
  b, h, w, c = x.shape
  return x.reshape(b, h // f, f, w // f, f, c).mean(axis=(2, 4))


def encode(setup: Setup, ae_params, x):
  """Latent of images x (B, X, Y, 1): the posterior mean, or x itself in pixel space."""
  if setup.ae_def is None:
    return x
  return nnx.merge(setup.ae_def, ae_params).encode(x)[0]


def decode(setup: Setup, ae_params, z):
  """Images (B, X, Y, 1) of latents z: the decoder, or z itself in pixel space."""
  if setup.ae_def is None:
    return z
  return nnx.merge(setup.ae_def, ae_params).decode(z)


def conditioning(setup: Setup, ae_params, corrupted, n4, log_field):
  """Conditioning stack for the UNet: latent of the corrupted image [+ N4 image latent, field]."""
  zy = encode(setup, ae_params, corrupted)
  if not setup.cfg.model.condition_n4:
    return zy, zy
  f = corrupted.shape[1] // zy.shape[1]
  return zy, jnp.concatenate([zy, encode(setup, ae_params, n4), _pool(log_field, f)], axis=-1)


def compute_dtype(cfg):
  """The forward-pass dtype (`train.compute_dtype`): float32, or bfloat16 for mixed precision."""
  name = cfg.train.get("compute_dtype", "float32")
  if name not in ("float32", "bfloat16"):
    raise UserInputError(f"train.compute_dtype must be 'float32' or 'bfloat16', not {name!r}")
  return jnp.dtype(name)


def _cast(tree, dtype):
  """Floating leaves of `tree` in `dtype` (float32 master weights → the forward pass's copy)."""
  return jax.tree.map(lambda x: x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x, tree)


def ae_loss(setup, params, batch, key):
  """Autoencoder loss on the clean images: L1 + w·(1 − SSIM) + KL weight · KL; (loss, metrics)."""
  cfg = setup.cfg.loss
  clean, _, _, _, mask = _prep(batch)
  dt = compute_dtype(setup.cfg)
  rec, mean, logvar = nnx.merge(setup.ae_def, _cast(params, dt))(clean.astype(dt), key)
  rec, mean, logvar = (a.astype(jnp.float32) for a in (rec, mean, logvar))
  l1 = jnp.mean(jnp.abs(rec - clean))
  ssim = jnp.mean(jax.vmap(metrics.ssim)(rec[..., 0], clean[..., 0], jnp.ones_like(mask)))
  kl = 0.5 * jnp.mean(mean ** 2 + jnp.exp(logvar) - 1.0 - logvar)
  loss = l1 + cfg.ssim_weight * (1.0 - ssim) + cfg.kl_weight * kl
  return loss, {"loss": loss, "l1": l1, "ssim": ssim, "kl": kl}


def diffusion_loss(setup, params, ae_params, batch, key):
  """x0-prediction MSE of the latent UNet at a random step t of the schedule; (loss, metrics)."""
  clean, corrupted, n4, log_field, _ = _prep(batch)
  z0 = jax.lax.stop_gradient(encode(setup, ae_params, clean))
  zy, cond = jax.lax.stop_gradient(conditioning(setup, ae_params, corrupted, n4, log_field))
  k_t, k_n = jax.random.split(key)
  b = z0.shape[0]
  sch = setup.schedule
  t = jax.random.randint(k_t, (b,), 1, sch.steps + 1)
  xt = diffusion.q_sample(sch, z0, zy, t, jax.random.normal(k_n, z0.shape))
  dt = compute_dtype(setup.cfg)
  pred = nnx.merge(setup.unet_def, _cast(params, dt))(xt.astype(dt), t, diffusion.noise_level(sch, t).astype(dt),
                                                      cond.astype(dt)).astype(jnp.float32)
  loss = jnp.mean((pred - z0) ** 2)
  return loss, {"loss": loss}


def _ema(ema, params, decay):
  return jax.tree.map(lambda e, p: decay * e + (1.0 - decay) * p, ema, params)


def make_steps(setup: Setup):
  """Jitted (ae_step, diffusion_step): (state, batch, key) → (state, metrics)."""

  @jax.jit
  def ae_step(state, batch, key):
    (_, m), g = jax.value_and_grad(lambda p: ae_loss(setup, p, batch, key), has_aux=True)(state["ae"])
    updates, opt = setup.tx_ae.update(g, state["opt_ae"], state["ae"])
    state = dict(state, ae=optax.apply_updates(state["ae"], updates), opt_ae=opt, step=state["step"] + 1)
    return state, m

  @jax.jit
  def diffusion_step(state, batch, key):
    loss_fn = lambda p: diffusion_loss(setup, p, state.get("ae"), batch, key)
    (_, m), g = jax.value_and_grad(loss_fn, has_aux=True)(state["unet"])
    updates, opt = setup.tx_unet.update(g, state["opt_unet"], state["unet"])
    unet = optax.apply_updates(state["unet"], updates)
    state = dict(state, unet=unet, opt_unet=opt, ema_unet=_ema(state["ema_unet"], unet, setup.cfg.train.ema),
                 step=state["step"] + 1)
    return state, m

  return ae_step, diffusion_step


def _mean_scores(x, ref, mask, prefix):
  s = jax.vmap(metrics.masked_scores)(x, ref, mask)
  return {f"{prefix}_ssim": jnp.mean(s["ssim"]), f"{prefix}_psnr": jnp.mean(s["psnr"])}


def make_eval(setup: Setup):
  """Jitted validation: (state, batch, key) → (scores, images) for the autoencoder stage
  (reconstruction of the clean image: the restorer's ceiling) and for the diffusion stage
  (restored with the configured K vs clean, next to the corrupted input and N4)."""

  @jax.jit
  def ae_eval(state, batch, key):
    clean, _, _, _, mask = _prep(batch)
    rec = decode(setup, state["ae"], encode(setup, state["ae"], clean))[..., 0]
    return _mean_scores(rec, clean[..., 0], mask, "ae"), {"reconstructed": rec, "clean": clean[..., 0]}

  @jax.jit
  def diffusion_eval(state, batch, key):
    clean, corrupted, n4, _, mask = _prep(batch)
    out = restore_batch(setup, state, batch, key, k=int(setup.cfg.schedule.sample_steps))
    scores = {**_mean_scores(out, clean[..., 0], mask, "restored"),
              **_mean_scores(corrupted[..., 0], clean[..., 0], mask, "corrupted"),
              **_mean_scores(n4[..., 0], clean[..., 0], mask, "n4")}
    return scores, {"corrupted": corrupted[..., 0], "N4": n4[..., 0], "restored": out, "clean": clean[..., 0]}

  return ae_eval, diffusion_eval


def image_grid(images: dict, rows: int = 4) -> np.ndarray:
  """uint8 grid: one row per example, one column per entry of `images` (foreground mean 1 → 0.5)."""
  cols = [np.asarray(v[:rows], np.float32) for v in images.values()]
  grid = np.concatenate([np.concatenate(list(c), axis=0) for c in cols], axis=1)
  return (np.clip(grid / 2.0, 0.0, 1.0) * 255).round().astype(np.uint8)


def _save_png(path: Path, grid: np.ndarray) -> None:
  """Writes a uint8 grid as a grayscale PNG, atomically."""
  import io

  import matplotlib.image

  from mri_jax.io.nifti import atomic_write_bytes

  path.parent.mkdir(parents=True, exist_ok=True)
  buf = io.BytesIO()
  matplotlib.image.imsave(buf, grid, cmap="gray", vmin=0, vmax=255, format="png")
  atomic_write_bytes(path, buf.getvalue())


# --------------------------------------------------------------------------------------------
# The loop
# --------------------------------------------------------------------------------------------
_STRUCTURAL = ("model", "schedule", "data")
_TRAIN_FIELDS = ("clean", "corrupted", "n4_corrected", "n4_log_field", "mask")  # what a step reads


def _check_workdir(cfg, workdir: Path) -> None:
  """Writes config.json, or refuses a workdir holding a run with another model/schedule/data."""
  path = workdir / "config.json"
  mine = json.loads(cfg.to_json_best_effort())
  if path.exists():
    theirs = json.loads(path.read_text())
    diff = [k for k in _STRUCTURAL if theirs.get(k) != mine.get(k)]
    if diff:
      raise UserInputError(f"workdir '{workdir}' holds a run with a different {', '.join(diff)} config; "
                           "use another --workdir (or delete it to start over)")
  elif jax.process_index() == 0:  # multi-host: one writer; the others only check
    from mri_jax.io.nifti import atomic_write_bytes

    workdir.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, json.dumps(mine, indent=2).encode())


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


def restore_batch(setup: Setup, state: dict, batch: dict, key: jax.Array, *, k: int = 1,
                  ema: bool = True, stochastic_eta: float = 0.0) -> jax.Array:
  """Restored images (B, X, Y), normalised to foreground mean 1, with K sampler steps."""
  _, corrupted, n4, log_field, _ = _prep(batch)
  return restore_normalised(setup, state, corrupted, n4, log_field, key, k=k, ema=ema,
                            stochastic_eta=stochastic_eta)


def restore_normalised(setup: Setup, state: dict, corrupted, n4, log_field, key: jax.Array, *,
                       k: int = 1, ema: bool = True, stochastic_eta: float = 0.0) -> jax.Array:
  """`restore_batch` on inputs already normalised to foreground mean 1, NHWC (B, X, Y, 1)."""
  zy, cond = conditioning(setup, state.get("ae"), corrupted, n4, log_field)
  net = nnx.merge(setup.unet_def, state["ema_unet" if ema else "unet"])
  sch = setup.schedule

  def predict(x, t):
    return net(x, t, diffusion.noise_level(sch, t), cond)

  z = diffusion.sample(sch, predict, zy, key, k=k, stochastic_eta=stochastic_eta)
  return decode(setup, state.get("ae"), z)[..., 0]


def train(cfg: ml_collections.ConfigDict, workdir, *, stop_after: int | None = None, log=print,
          devices=None) -> dict:
  """Trains (or resumes) the configured run in `workdir`; returns the final metrics.

  Args:
    stop_after: stop (after checkpointing) once this global step is reached — for tests that
      emulate a killed run.
    devices: devices of the data mesh (default: all devices of all processes).
  """
  import orbax.checkpoint as ocp
  import grain.python as grain

  workdir = Path(workdir).resolve()
  lead = jax.process_index() == 0  # multi-host: process 0 writes logs, event files and PNGs
  if not lead:
    log = lambda message: None  # noqa: E731
  data_dir = cfg.data.data_dir or None
  compute_dtype(cfg)  # refuse bad values before anything is written or compiled
  sharding = cfg.data.get("process_sharding", "records")
  if sharding not in pipeline.PROCESS_SHARDINGS:
    raise UserInputError(f"data.process_sharding must be one of {pipeline.PROCESS_SHARDINGS}, not {sharding!r}")
  try:
    source = pipeline.data_source(cfg.data.name, "train", data_dir=data_dir)
  except Exception as err:  # TFDS raises several types for a missing / unbuilt dataset
    raise UserInputError(f"cannot read dataset {cfg.data.name} under data_dir '{data_dir or '(TFDS default)'}' "
                         f"({type(err).__name__}); build it with `mri-jax build-data`") from None
  mesh = pipeline.data_mesh(devices)
  _check_data(cfg, source, len(mesh.devices.ravel()))
  _check_workdir(cfg, workdir)  # after the data checks: a failed start leaves no config.json
  loader = pipeline.make_loader(cfg.data.name, "train", data_dir=data_dir, global_batch=cfg.train.batch,
                                seed=cfg.seed, source=source, process_sharding=sharding,
                                fields=_TRAIN_FIELDS)
  it = iter(loader)
  setup, state = init_state(cfg)
  ae_step, diff_step = make_steps(setup)
  eval_every = int(cfg.train.get("eval_every", 0))
  if eval_every:
    ae_eval, diff_eval = make_eval(setup)
    try:
      val_source = pipeline.data_source(cfg.data.name, "validation", data_dir=data_dir)
    except Exception as err:
      raise UserInputError(f"dataset {cfg.data.name} has no validation split ({type(err).__name__}); "
                           "set --config.train.eval_every=0 to train without validation") from None
    val_loader = pipeline.make_loader(cfg.data.name, "validation", data_dir=data_dir, global_batch=cfg.train.batch,
                                      seed=cfg.seed, source=val_source, shuffle=False, allow_small=True,
                                      process_sharding=sharding, fields=_TRAIN_FIELDS)
  total = (cfg.train.ae_steps if setup.ae_def is not None else 0) + cfg.train.diffusion_steps
  ae_steps = total - cfg.train.diffusion_steps

  mgr = ocp.CheckpointManager(workdir / "checkpoints", options=ocp.CheckpointManagerOptions(
      max_to_keep=cfg.train.keep, save_interval_steps=cfg.train.checkpoint_every))
  start = 0
  if mgr.latest_step() is not None:
    start = int(mgr.latest_step())
    leaves, treedef = jax.tree.flatten(state)
    abstract = {f"{i:05d}": ocp.utils.to_shape_dtype_struct(x) for i, x in enumerate(leaves)}
    restored = mgr.restore(start, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract), data=grain.PyGrainCheckpointRestore(it)))
    state = jax.tree.unflatten(treedef, [restored["state"][f"{i:05d}"] for i in range(len(leaves))])
    log(f"resumed from step {start}")
  state = _replicate(state, mesh)
  base = jax.random.key(cfg.seed)
  history = []
  t0, last = time.perf_counter(), None
  from mri_jax.train.writers import MetricWriter, NullWriter

  writer = MetricWriter(workdir, tensorboard=bool(cfg.train.get("tensorboard", True))) if lead else NullWriter()

  def validate(done: int, stage: str) -> dict:
    """Scores averaged over the first `eval_batches` validation batches; PNG grid of the first."""
    fn = ae_eval if stage == "ae" else diff_eval
    vit = iter(val_loader)
    totals, grid = {}, None
    n = int(cfg.train.get("eval_batches", 1))
    for b in range(n):
      scores, images = fn(state, pipeline.to_global(next(vit), mesh), jax.random.fold_in(jax.random.fold_in(base, 2 ** 31 - 1), b))
      for k, v in scores.items():
        totals[k] = totals.get(k, 0.0) + float(v) / n
      if grid is None:
        if jax.process_count() > 1:  # the batch is spread over processes: gather it for the grid
          from jax.experimental import multihost_utils

          images = multihost_utils.process_allgather(images, tiled=True)
        grid = image_grid(images)
    writer.write_scalars(done, totals, stage=f"eval_{stage}")
    writer.write_images(done, {f"eval_{stage}/{' | '.join(images)}": grid})
    if lead:
      _save_png(workdir / "samples" / f"step_{done:07d}_{stage}.png", grid)
    log(f"eval at step {done} [{stage}] " + " ".join(f"{k} {v:.4g}" for k, v in totals.items()))
    return totals

  try:
    for step in range(start, total):
      batch = pipeline.to_global(next(it), mesh)
      key = jax.random.fold_in(base, step)
      stage = "ae" if step < ae_steps else "diffusion"
      state, m = (ae_step if stage == "ae" else diff_step)(state, batch, key)
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
      if eval_every and (done % eval_every == 0 or done == total or done == ae_steps):
        history.append({"step": done, "stage": f"eval_{stage}", **validate(done, stage)})
      if done % cfg.train.checkpoint_every == 0 or done == total or done == stop_after:
        flat = {f"{i:05d}": x for i, x in enumerate(jax.tree.leaves(state))}  # nnx/optax trees → flat dict
        mgr.save(done, args=ocp.args.Composite(state=ocp.args.StandardSave(flat),
                                               data=grain.PyGrainCheckpointSave(it)), force=True)
      if stop_after is not None and done >= stop_after:
        break
  finally:
    writer.close()
  mgr.wait_until_finished()
  mgr.close()
  return {"final": last, "history": history, "state": state, "setup": setup}
