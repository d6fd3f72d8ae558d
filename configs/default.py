"""The shipped restorer: latent restoration diffusion conditioned on N4, 128² slices.

Sized so the whole recipe (data + both stages) finishes on a 2-core CPU in about 1.5 h; the
shipped weights in `mri_jax/weights/default/` were made with exactly these commands:
  mri-jax build-data --config slices128 --data-dir data
  mri-jax train --config configs/default.py --workdir runs/default --config.data.data_dir=data
  mri-jax export-weights runs/default mri_jax/weights/default
On a GPU/TPU scale it up from the command line, e.g. --config.train.batch=64
--config.train.ae_steps=20000 --config.train.diffusion_steps=40000 (a different model/run:
use a new workdir).
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0
  # process_sharding: "records" (each host reads its shard) or "global" (every host walks the same
  # global batches: identical batches for any host count; see pipeline.make_loader)
  c.data = ml_collections.ConfigDict(dict(name="mri_pairs/slices128", data_dir="", process_sharding="records"))
  c.model = ml_collections.ConfigDict(dict(
      space="latent",               # or "pixel": the same UNet on images (ablation)
      ae_channels=(16, 32, 64),     # downsampling 4
      latent=4,
      unet_channels=(32, 64, 128),
      emb=64,
      condition_n4=True,            # condition on the N4 image latent and the N4 log field
      n4_iterations=(50, 50, 50, 50),  # N4 of the conditioning: as the dataset was built (slices128)
      fidelity=False,               # the fidelity path (pixel features into the decoder; models/fidelity.py)
      fidelity_weight=1.0,          # its default weight w at inference
      fidelity_residual=False,      # the path also blends the N4 image + a learned correction into the output
  ))
  c.schedule = ml_collections.ConfigDict(dict(kind="restoration", steps=15, kappa=0.5, sample_steps=1))
  c.optimizer = ml_collections.ConfigDict(dict(lr=1e-3, warmup=100, final_lr_fraction=0.05, clip=1.0,
                                               weight_decay=1e-4))
  c.loss = ml_collections.ConfigDict(dict(ssim_weight=0.2, kl_weight=1e-6))
  # joint_steps: the joint stage after the others (UNet + fidelity path trained end to end on the
  # restored image's L1 + SSIM; `mri_jax.train.trainer`), at peak rate joint_lr
  c.train = ml_collections.ConfigDict(dict(ae_steps=2_000, diffusion_steps=4_000, fidelity_steps=0, joint_steps=0,
                                           joint_lr=2e-4, batch=8, ema=0.999,
                                           log_every=50, checkpoint_every=500, keep=3,
                                           eval_every=500, eval_batches=4, tensorboard=True,
                                           compute_dtype="float32"))  # or "bfloat16" (mixed precision)
  return c
