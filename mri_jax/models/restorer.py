"""The restorer itself: its networks, its input preparation, and restoring with K network passes.

Training (`mri_jax.train`) and inference (`mri_jax.restore`, `mri_jax.evaluate`) both import this
module, never each other. It holds:

- **Networks** (`Restorer`): the KL autoencoder (absent in pixel space) and the conditional UNet,
  their graph definitions and the schedule, all from the model's config (`config.json`'s `model`
  and `schedule` groups). `Restorer.abstract_params()` is the weight template, built with
  `nnx.eval_shape` (no parameter is allocated, no optimiser built); `init_params(seed)` the
  trainable start.
- **Input preparation**, one definition for training, inference and evaluation:
  `normalise_batch` (a training record: each image ÷ its mean inside the mask) and
  `prepare_slices` (an arbitrary stack of slices: Otsu foreground, per-slice scale, centred
  zero-padding to the model's multiple, N4 with the settings the model was trained with).
- **Restoring**: `encode` / `decode` / `conditioning` and `Restorer.restore` (the schedule's
  sampler over the latent UNet, then the decoder — with the fidelity path of
  `mri_jax.models.fidelity` when the config has `model.fidelity`: the decoder also receives
  features of the input's pixels, weighted by w = `model.fidelity_weight` unless given).

Params are a named dict {"ae": nnx.State | None, "unet": nnx.State, "fid": nnx.State | None}; at
inference "unet" holds the EMA weights.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from mri_jax import diffusion, metrics
from mri_jax.models import fidelity
from mri_jax.models.nets import Autoencoder, UNet

N4_BACKENDS = ("jax", "sitk", "none")
MIN_FOREGROUND = 64  # voxels a slice needs to get its own intensity scale (and its own N4)
# N4 iterations of the datasets' builder configs when a model's config does not record them
# (configs written before `model.n4_iterations` existed: the shipped weights' slices128 data).
DEFAULT_N4_ITERATIONS = (50, 50, 50, 50)


# --------------------------------------------------------------------------------------------
# Shapes of the model
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


def n4_settings(cfg):
  """The N4 settings of the model's conditioning: what its training data was made with."""
  from mri_jax import n4

  iterations = cfg.model.get("n4_iterations", None) or DEFAULT_N4_ITERATIONS
  return n4.N4Settings(iterations=tuple(int(i) for i in iterations))


def has_fidelity(cfg) -> bool:
  """Whether the model has the fidelity path (`model.fidelity`; configs before it had none)."""
  return bool(cfg.model.get("fidelity", False)) and cfg.model.space == "latent"


def fidelity_residual(cfg) -> bool:
  """Whether the fidelity path also blends the N4 image + a learned correction into the output
  (`model.fidelity_residual`; models before it had none)."""
  return has_fidelity(cfg) and bool(cfg.model.get("fidelity_residual", False))


def default_fidelity_weight(cfg) -> float:
  """The model's default fidelity weight w (1: what its training optimised)."""
  return float(cfg.model.get("fidelity_weight", 1.0))


def build_networks(cfg, seed: int) -> tuple[Autoencoder | None, UNet, fidelity.FidelityNet | None]:
  """(autoencoder or None in pixel space, UNet, fidelity network or None) from `seed`.

  The fidelity network takes its own key branch, so adding it leaves the other two unchanged.
  """
  rngs = nnx.Rngs(seed)
  ae = None
  if cfg.model.space == "latent":
    ae = Autoencoder(channels=tuple(cfg.model.ae_channels), latent=cfg.model.latent, rngs=rngs)
  unet = UNet(in_channels=latent_channels(cfg) + cond_channels(cfg), out_channels=latent_channels(cfg),
              channels=tuple(cfg.model.unet_channels), emb=cfg.model.emb, rngs=rngs)
  fid = None
  if has_fidelity(cfg):
    fid = fidelity.FidelityNet(channels=tuple(cfg.model.ae_channels), residual=fidelity_residual(cfg),
                               rngs=nnx.Rngs(seed + 1_000_003))
  return ae, unet, fid


def _params(nets) -> dict:
  ae, unet, fid = nets
  pick = lambda m: None if m is None else nnx.split(m, nnx.Param)[1]  # noqa: E731
  return {"ae": pick(ae), "unet": pick(unet), "fid": pick(fid)}


# --------------------------------------------------------------------------------------------
# The restorer
# --------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True, eq=False)
class Restorer:
  """The static parts of a restorer: config, schedule and the networks' graph definitions.

  Attributes:
    cfg: the model's config (`model` and `schedule` groups are read).
    schedule: the restoration (or noise) schedule.
    ae_def: the autoencoder's graph definition (None in pixel space).
    unet_def: the UNet's graph definition.
    fid_def: the fidelity network's graph definition (None without the fidelity path).
  """

  cfg: ml_collections.ConfigDict
  schedule: diffusion.Schedule
  ae_def: object
  unet_def: object
  fid_def: object = None
  template: dict | None = dataclasses.field(default=None, repr=False)

  @classmethod
  def from_config(cls, cfg) -> "Restorer":
    """The restorer a config describes; builds only abstract networks (one `nnx.eval_shape`)."""
    from mri_jax import compile_cache

    def abstract():
      nets = nnx.eval_shape(lambda: build_networks(cfg, 0))
      graph = lambda m: None if m is None else nnx.split(m, nnx.Param)[0]  # noqa: E731
      return tuple(graph(m) for m in nets), _params(nets)

    # kept in the compilation cache when it is on (inference start-up: ≈ 0.6 s saved per process)
    defs, template = compile_cache.cached_value("restorer-abstract", cfg.to_json_best_effort(sort_keys=True), abstract)
    sched = diffusion.make_schedule(cfg.schedule.kind, cfg.schedule.steps, kappa=cfg.schedule.kappa)
    return cls(cfg, sched, *defs, template=template)

  @property
  def factor(self) -> int:
    """Total downsampling: images are padded to a multiple of it."""
    return downsampling(self.cfg)

  def abstract_params(self) -> dict:
    """{"ae", "unet", "fid"} of `jax.ShapeDtypeStruct`s: the weight template, nothing allocated."""
    return self.template if self.template is not None else _params(nnx.eval_shape(lambda: build_networks(self.cfg, 0)))

  def init_params(self, seed: int) -> dict:
    """{"ae", "unet", "fid"}: freshly initialised parameters from `seed` (training's start)."""
    return _params(build_networks(self.cfg, seed))

  # ------------------------------------------------------------------------------------------
  def autoencoder(self, ae_params) -> Autoencoder:
    return nnx.merge(self.ae_def, ae_params)

  def unet(self, unet_params) -> UNet:
    return nnx.merge(self.unet_def, unet_params)

  def fidelity_net(self, fid_params) -> fidelity.FidelityNet | None:
    return None if self.fid_def is None or fid_params is None else nnx.merge(self.fid_def, fid_params)

  def encode(self, ae_params, x: jax.Array) -> jax.Array:
    """Latent (posterior mean) of images x (B, X, Y, 1), or x itself in pixel space."""
    if self.ae_def is None:
      return x
    return self.autoencoder(ae_params).encode(x)[0]

  def decode(self, ae_params, z: jax.Array, fid_params=None, pixels=None, weight=1.0) -> jax.Array:
    """Images (B, X, Y, 1) of latents z: the decoder (with the fidelity path when `fid_params` and
    the (B, X, Y, 3) `pixels` are given), or z itself in pixel space."""
    if self.ae_def is None:
      return z
    return fidelity.decode(self.autoencoder(ae_params), self.fidelity_net(fid_params), z, pixels, weight)

  def conditioning(self, ae_params, corrupted, n4, log_field) -> tuple[jax.Array, jax.Array]:
    """(latent of the corrupted image, the UNet's conditioning stack [+ N4 latent, pooled field])."""
    zy = self.encode(ae_params, corrupted)
    if not self.cfg.model.condition_n4:
      return zy, zy
    f = corrupted.shape[1] // zy.shape[1]
    return zy, jnp.concatenate([zy, self.encode(ae_params, n4), _pool(log_field, f)], axis=-1)

  def restored_latent(self, params: dict, corrupted, n4, log_field, key: jax.Array, *, k: int = 1,
                      stochastic_eta: float = 0.0) -> jax.Array:
    """The sampler's final latent (B, X/f, Y/f, C) (pixels in pixel space); see `restore`."""
    zy, cond = self.conditioning(params.get("ae"), corrupted, n4, log_field)
    net = self.unet(params["unet"])
    sch = self.schedule

    def predict(x, t):
      return net(x, t, diffusion.noise_level(sch, t), cond)

    return diffusion.sample(sch, predict, zy, key, k=k, stochastic_eta=stochastic_eta)

  def restore(self, params: dict, corrupted, n4, log_field, key: jax.Array, *, k: int = 1,
              stochastic_eta: float = 0.0, fidelity_weight: float | jax.Array | None = None) -> jax.Array:
    """Restored images (B, X, Y) from inputs normalised to foreground mean 1, NHWC (B, X, Y, 1).

    Args:
      params: {"ae", "unet", "fid"} (the UNet's EMA weights at inference).
      corrupted, n4, log_field: the corrupted image, its N4-corrected image and N4 log field.
      key: sampler key (start noise of the schedule; per-step noise when stochastic).
      k: network passes, 1 … the schedule's T (static).
      fidelity_weight: w of the fidelity path (default: the model's); ignored without one.
    """
    z = self.restored_latent(params, corrupted, n4, log_field, key, k=k, stochastic_eta=stochastic_eta)
    w = default_fidelity_weight(self.cfg) if fidelity_weight is None else fidelity_weight
    pix = fidelity.pixels(corrupted, n4, log_field) if params.get("fid") is not None else None
    return self.decode(params.get("ae"), z, params.get("fid"), pix, w)[..., 0]


def _pool(x, f):
  if f == 1:
    return x
  b, h, w, c = x.shape
  return x.reshape(b, h // f, f, w // f, f, c).mean(axis=(2, 4))


# --------------------------------------------------------------------------------------------
# Input preparation
# --------------------------------------------------------------------------------------------
def normalise_batch(batch: dict):
  """A training/validation record batch as the model sees it: (clean, corrupted, N4, N4 log field)
  NHWC, each image divided by its mean inside the record's mask, and the mask (B, X, Y)."""
  mask = batch["mask"] > 0
  norm = jax.vmap(metrics.normalise)
  clean = norm(batch["clean"], mask)
  corrupted = norm(batch["corrupted"], mask)
  n4 = norm(batch["n4_corrected"], mask)
  return clean[..., None], corrupted[..., None], n4[..., None], batch["n4_log_field"][..., None], mask


def centred_pads(shape: tuple[int, int], factor: int, target: tuple[int, int] | None = None
                 ) -> tuple[tuple[int, int], tuple[int, int]]:
  """Zero-padding (before, after) per axis that brings a 2-D shape to `target` (default: the next
  multiple of `factor`), split evenly (the extra voxel after)."""
  target = tuple(-(-n // factor) * factor for n in shape) if target is None else tuple(target)
  pads = []
  for n, t in zip(shape, target):
    if t < n or t % factor:
      raise ValueError(f"cannot pad {tuple(shape)} to {target} (a multiple of {factor} at least as large)")
    pads.append(((t - n) // 2, t - n - (t - n) // 2))
  return tuple(pads)


# Padded sizes of `bucket_shape`: multiples of BUCKET_STEP up to BUCKET_LIMIT, then of twice that.
# A new image size then rarely means a new compiled program (and the persistent compilation cache
# keeps each one), for at most ~6 % more pixels at 256.
BUCKET_STEP = 16
BUCKET_LIMIT = 256


def bucket_shape(shape: tuple[int, int], factor: int) -> tuple[int, int]:
  """The padded slice shape the restorer runs at: each axis rounded up to a multiple of
  BUCKET_STEP (2 × BUCKET_STEP above BUCKET_LIMIT) and of the model's downsampling `factor`."""
  out = []
  for n in shape:
    step = BUCKET_STEP if n <= BUCKET_LIMIT else 2 * BUCKET_STEP
    step = step * factor // np.gcd(step, factor)  # a multiple of both
    out.append(int(-(-n // step) * step))
  return tuple(out)


class Prepared(NamedTuple):
  """Slices ready for the network (see `prepare_slices`).

  Attributes:
    corrupted: (N, PX, PY) slices ÷ scale, zero-padded.
    n4: (N, PX, PY) N4-corrected `corrupted` (a copy without N4).
    log_field: (N, PX, PY) N4 log field (zeros without N4).
    mask: (N, PX, PY) foreground, padded.
    scale: (N,) the divisor of each slice.
    crop: index that cuts the padded slices back to (N, X, Y).
    foreground: (N, PX, PY) the non-air foreground of the slices (`scale_foreground`), padded.
  """

  corrupted: np.ndarray
  n4: np.ndarray
  log_field: np.ndarray
  mask: np.ndarray
  scale: np.ndarray
  crop: tuple
  foreground: np.ndarray


# The model's input scale is the mean over the *non-air* foreground (what the training records'
# masks hold). Otsu's threshold leaves dark tissue out of that mean; everything above this fraction
# of it (after a 1-px smoothing) matches the records' masks: on 24 mixed128 test slices the restorer
# scores SSIM 0.861 with it, 0.859 with the records' own masks and 0.731 with Otsu's mask.
FOREGROUND_FRACTION = 0.2


def scale_foreground(slices: np.ndarray, otsu: np.ndarray, *, per_slice: bool = False) -> np.ndarray:
  """(N, X, Y) non-air foreground for the input scale: 1-px-smoothed slices above
  FOREGROUND_FRACTION × Otsu's threshold — the lowest value inside `otsu` (Otsu's mask of the
  stack), or of each slice's own mask when `per_slice` (unrelated slices)."""
  from scipy import ndimage

  smooth = np.stack([ndimage.gaussian_filter(x, 1.0) for x in slices])
  if per_slice:
    levels = [FOREGROUND_FRACTION * float(x[m].min()) if m.any() else np.inf for x, m in zip(slices, otsu)]
    return smooth > np.asarray(levels, np.float32)[:, None, None]
  return smooth > (FOREGROUND_FRACTION * float(slices[otsu].min()) if otsu.any() else np.inf)


def slice_scales(slices: np.ndarray, mask: np.ndarray) -> np.ndarray:
  """(N,) mean of each slice inside its foreground (the whole stack's foreground mean for slices
  with fewer than MIN_FOREGROUND foreground voxels): the model's input scale is foreground mean 1."""
  counts = mask.reshape(len(slices), -1).sum(axis=1)
  sums = (slices * mask).reshape(len(slices), -1).sum(axis=1)
  fg_mean = float(slices[mask].mean())
  scale = np.where(counts >= MIN_FOREGROUND, sums / np.maximum(counts, 1), fg_mean).astype(np.float32)
  return np.maximum(scale, 1e-12)


def prepare_slices(slices: np.ndarray, mask: np.ndarray, factor: int, *, n4_backend: str = "jax",
                   n4_settings=None, batch_size: int = 16, scale: np.ndarray | None = None,
                   per_slice: bool = False, log_field: np.ndarray | None = None,
                   shape: tuple[int, int] | None = None) -> Prepared:
  """Normalise + pad + N4 conditioning of (N, X, Y) magnitude slices with their foreground masks.

  Args:
    slices: (N, X, Y) non-negative slices.
    mask: (N, X, Y) bool foreground (Otsu's mask of the whole image): N4's mask.
    factor: the model's downsampling (`Restorer.factor`).
    n4_backend: 'jax', 'sitk' or 'none' (no N4: the conditioning repeats the slice, zero field).
    n4_settings: `N4Settings` (default: `n4_settings(cfg)` of the model — pass it).
    batch_size: slices per N4 call.
    scale: (N,) divisors (default `slice_scales` over `scale_foreground(slices, mask, per_slice=...)`).
    per_slice: the slices are unrelated images whose `mask` holds one Otsu threshold each.
    log_field: (N, X, Y) an N4 log field of `slices` computed elsewhere (a volume's 3-D N4): no N4
      is run; each slice's N4 image (slice ÷ field) is scaled to foreground mean 1, as the
      training records' were, and its log field shifted to match (slice = N4 image × field).
    shape: the padded (PX, PY) (default: the next multiple of `factor`; see `bucket_shape`).
  """
  foreground = scale_foreground(slices, mask, per_slice=per_slice)
  scale = np.asarray(slice_scales(slices, foreground) if scale is None else scale, np.float32)
  norm = slices / scale[:, None, None]
  (bx, ax), (by, ay) = centred_pads(norm.shape[1:], factor, shape)
  pads = ((0, 0), (bx, ax), (by, ay))
  norm_p, mask_p = np.pad(norm, pads), np.pad(mask, pads)
  if log_field is None:
    n4_img, n4_log = _n4_slices(norm_p, mask_p, n4_backend, n4_settings, batch_size)
  else:
    n4_log = np.pad(np.asarray(log_field, np.float32), pads)
    n4_img = norm_p * np.exp(-n4_log)
    fg = scale_foreground(norm_p, mask_p, per_slice=per_slice)
    means = slice_scales(n4_img, fg)
    n4_img = n4_img / means[:, None, None]
    n4_log = n4_log + np.log(means)[:, None, None]
  crop = (slice(None), slice(bx, bx + norm.shape[1]), slice(by, by + norm.shape[2]))
  return Prepared(norm_p, n4_img.astype(np.float32), n4_log.astype(np.float32), mask_p, scale, crop,
                  np.pad(foreground, pads))


def with_log_field(prep: Prepared, log_field: np.ndarray) -> Prepared:
  """`prep` with another (N, PX, PY) log field (e.g. N4's refined by `mri_jax.models.fieldnet`):
  the N4 image becomes corrupted ÷ exp(log_field), rescaled to the foreground means `prep`'s N4
  image had, and the field is shifted to match (corrupted = N4 image × exp(log field) still)."""
  n4_img = prep.corrupted * np.exp(-np.asarray(log_field, np.float32))
  c = slice_scales(prep.n4, prep.foreground) / slice_scales(n4_img, prep.foreground)
  return prep._replace(n4=(n4_img * c[:, None, None]).astype(np.float32),
                       log_field=(log_field - np.log(c)[:, None, None]).astype(np.float32))


def padded_batch(n: int, batch_size: int) -> int:
  """Images per compiled call for n images: `batch_size`, or for fewer the next power of two (so a
  handful of batch shapes covers every input, each compiled once; the last batch is padded)."""
  if n >= batch_size:
    return batch_size
  return min(batch_size, 1 << max(0, int(n - 1).bit_length()))


def _n4_slices(slices: np.ndarray, masks: np.ndarray, backend: str, settings, batch_size: int):
  """(N4-corrected, log field) of normalised slices; slices with too little foreground pass unchanged."""
  from mri_jax import n4

  corrected, log_field = slices.copy(), np.zeros_like(slices)
  if backend == "none":
    return corrected, log_field
  settings = n4.N4Settings(iterations=DEFAULT_N4_ITERATIONS) if settings is None else settings
  idx = np.flatnonzero(masks.reshape(len(masks), -1).sum(axis=1) >= MIN_FOREGROUND)
  bs = padded_batch(len(idx), batch_size)
  for start in range(0, len(idx), bs):
    sel = idx[start:start + bs]
    if backend == "jax":
      pad = np.concatenate([sel, np.repeat(sel[-1:], bs - len(sel))])
      res = n4.n4_batch(slices[pad], masks[pad], settings=settings)
      corrected[sel] = np.asarray(res.corrected)[:len(sel)]
      log_field[sel] = np.asarray(res.log_field)[:len(sel)]
    else:
      for i in sel:
        r = n4.n4_sitk(slices[i], masks[i], settings=settings)
        corrected[i], log_field[i] = r.corrected, r.log_field
  return corrected, log_field
