"""The train state (a typed pytree) and the optimisers that update it.

`TrainState` holds both networks' parameters, the UNet's EMA copy, both AdamW states and the global
step; checkpoints store it by field and parameter names (`mri_jax.checkpoints`). The networks
themselves (graph definitions, schedule) come from `mri_jax.models.restorer.Restorer`.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import struct

from mri_jax.models.restorer import Restorer, has_fidelity


@struct.dataclass
class TrainState:
  """Everything a training step changes.

  Attributes:
    step: global step (shared by the autoencoder and diffusion stages).
    unet: UNet parameters (nnx.State).
    ema_unet: exponential moving average of `unet` (what inference uses).
    opt_unet: the UNet's optimiser state.
    ae: autoencoder parameters (None in pixel space).
    opt_ae: the autoencoder's optimiser state (None in pixel space).
    fid: fidelity-path parameters (None without `model.fidelity`).
    opt_fid: its optimiser state.
    opt_joint: the joint stage's optimiser state over {"unet", "fid"} (None without that stage).
  """

  step: jax.Array
  unet: Any
  ema_unet: Any
  opt_unet: Any
  ae: Any = None
  opt_ae: Any = None
  fid: Any = None
  opt_fid: Any = None
  opt_joint: Any = None

  def inference_params(self) -> dict:
    """{"ae", "unet", "fid"} as inference reads them (the UNet's EMA weights)."""
    return {"ae": self.ae, "unet": self.ema_unet, "fid": self.fid}


def make_tx(cfg_opt, steps: int, peak_lr: float | None = None) -> optax.GradientTransformation:
  """AdamW with linear warm-up to `peak_lr` (default `cfg_opt.lr`) and cosine decay, global-norm
  clipping."""
  steps = max(int(steps), 1)
  warmup = min(int(cfg_opt.warmup), max(steps - 1, 0))
  peak = float(cfg_opt.lr if peak_lr is None else peak_lr)
  lr = optax.warmup_cosine_decay_schedule(0.0, peak, warmup, steps, peak * cfg_opt.final_lr_fraction)
  return optax.chain(optax.clip_by_global_norm(cfg_opt.clip), optax.adamw(lr, weight_decay=cfg_opt.weight_decay))


def optimisers(cfg) -> tuple[optax.GradientTransformation, ...]:
  """(autoencoder, UNet, fidelity path, joint stage) optimisers, each scheduled over its own
  stage's steps (the joint stage's peak rate is `train.joint_lr`)."""
  return (make_tx(cfg.optimizer, cfg.train.ae_steps), make_tx(cfg.optimizer, cfg.train.diffusion_steps),
          make_tx(cfg.optimizer, fidelity_steps(cfg)),
          make_tx(cfg.optimizer, joint_steps(cfg), cfg.train.get("joint_lr", cfg.optimizer.lr)))


def fidelity_steps(cfg) -> int:
  """Steps of the fidelity stage (0 without the fidelity path)."""
  return int(cfg.train.get("fidelity_steps", 0)) if has_fidelity(cfg) else 0


def joint_steps(cfg) -> int:
  """Steps of the joint stage: the UNet (and the fidelity path) trained end to end on the restored
  image's pixel loss (0: no such stage)."""
  return int(cfg.train.get("joint_steps", 0))


def init_state(cfg) -> tuple[Restorer, TrainState]:
  """(the restorer, the initial train state from `cfg.seed`)."""
  restorer = Restorer.from_config(cfg)
  params = restorer.init_params(cfg.seed)
  tx_ae, tx_unet, tx_fid, tx_joint = optimisers(cfg)
  ae, fid = params["ae"], params["fid"]
  state = TrainState(step=jnp.asarray(0, jnp.int32), unet=params["unet"], ema_unet=params["unet"],
                     opt_unet=tx_unet.init(params["unet"]), ae=ae,
                     opt_ae=None if ae is None else tx_ae.init(ae),
                     fid=fid, opt_fid=None if fid is None else tx_fid.init(fid),
                     opt_joint=tx_joint.init({"unet": params["unet"], "fid": fid}) if joint_steps(cfg) else None)
  return restorer, state
