"""The larger restorer for one GPU in 10 minutes: mixed data made on the device, wide corruption,
the fidelity path. Trained by one script that needs only jax, flax, optax, orbax, chex, numpy and
scipy plus the carried files in `benchmarks/gpu_assets/` (see `benchmarks/gpu_recipe.py`):
  python benchmarks/gpu_recipe.py --out $OUT               (one GPU: about 8 minutes in all)
  python benchmarks/gpu_recipe.py --tiny --out /tmp/gpu_tiny   (CPU smoke run: `gpu.py:tiny`)

There is no dataset: each step draws a fresh batch on the device (`data` group): clean images of
the mixed generator (`mri_jax.data.mixed`, the settings of the `mixed128` build), the simulator
with the 'wide' ranges (the coil count and coil model drawn per chunk of `coil_groups` examples,
as the build draws them per subject), the field of view / zero background, then JAX N4 with the
model's `n4_iterations` — all inside jit. Same network family as `configs/mixed.py`, twice as wide
(AE 32-64-128, UNet 64-128-256, embedding 128: 4× the multiply-adds per image), batch 64 (8×).

Size estimate (how the step counts were chosen; measured on the 2-core CPU, no GPU at hand):
- FLOPs per training step (XLA's cost analysis of the lowered steps, `gpu_recipe.py --estimate`):
  AE stage 0.70 TFLOP, diffusion 0.43, fidelity 0.55 at batch 64 / 128²; the on-device batch
  (generator + 12 simulator branches + 200 N4 iterations) about 0.02 TFLOP.
- The tiny variant below ran on 2 CPU cores at ≈ 20–40 GFLOP/s effective (`--tiny` reports it).
  That rate says nothing about a GPU; on an H200 the same XLA convolutions run in TF32 with a
  peak near 0.5 PFLOP/s dense, and small-channel convolutions at 128² typically reach 5–15% of
  it: 25–75 TFLOP/s, i.e. 6–28 ms per AE step, 6–17 ms per diffusion step, plus the on-device
  batch, which is latency-bound (≈ 200 sequential N4 iterations of small kernels: guessed
  15–40 ms per batch, independent of the batch size up to a point).
- At a pessimistic ≈ 55 ms per step all-in, the 3000 + 3000 + 1500 steps below train in ≈ 410 s;
  compilation (generator, three steps, evaluation) ≈ 60–90 s; evaluation ≈ 60–90 s.
  Because this is an estimate, the script measures the real step times after compiling and
  rescales the step counts to its time budget (`--budget-s`, default 480 s for the whole run;
  `--budget-s 0` trains exactly these counts). results.json records the counts it used.
"""

from configs import mixed, tiny


def get_config(arg=None):
  """`arg` = 'tiny': 48² images at 4 mm, narrow networks, a few steps (the CPU smoke run)."""
  c = mixed.get_config()
  # No dataset: batches are generated on the device (benchmarks/gpu_recipe.py reads this group).
  c.data.name = "on_device/mixed128"
  c.data.size = 128             # record side (pixels), as mri_pairs/mixed128
  c.data.canvas = 128           # scene canvas (pixels)
  c.data.voxel_mm = 2           # pixel size of the canvas; the carried anatomy is at 2 mm
  c.data.corruption = "wide"    # physics.sampling.training_ranges variant
  c.data.coils = (1, 2, 4, 8, 16, 32)  # coil counts (× the ranges' coil models), drawn per chunk
  c.data.coil_groups = 8        # chunks of a batch with their own coil count and model
  c.data.eval_batches = 8       # held-out on-device batches for the synthetic evaluation
  c.data.batches_per_draw = 4   # batches one generator call makes (its cost is mostly N4 latency)
  c.model.ae_channels = (32, 64, 128)
  c.model.latent = 4
  c.model.unet_channels = (64, 128, 256)
  c.model.emb = 128
  c.model.fidelity = True
  c.optimizer.lr = 1e-3
  c.optimizer.warmup = 200
  c.train.batch = 64
  c.train.ae_steps = 2_500
  c.train.diffusion_steps = 2_500
  c.train.fidelity_steps = 1_250
  c.train.log_every = 100
  c.train.compute_dtype = "float32"  # TF32 convolutions on the GPU; "bfloat16" is faster, less tested
  if arg == "tiny":
    c.data.size = 48
    c.data.canvas = 48
    c.data.voxel_mm = 4
    c.data.coils = (1, 8)
    c.data.coil_groups = 2
    c.data.eval_batches = 2
    c.data.batches_per_draw = 2
    t = tiny.get_config("fidelity")  # the tiny networks, N4 and optimiser of the tests
    c.model.update({k: t.model[k] for k in ("ae_channels", "latent", "unet_channels", "emb", "n4_iterations")})
    c.optimizer = t.optimizer
    c.train.update(dict(batch=8, ae_steps=6, diffusion_steps=6, fidelity_steps=4, log_every=2))
  elif arg not in (None, ""):
    raise ValueError(f"unknown gpu variant {arg!r} (known: tiny)")
  return c
