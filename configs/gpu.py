"""The larger restorer for one GPU in 10 minutes: mixed data made on the device, wide corruption,
the residual fidelity path. Trained by one script that needs only jax, flax, optax, orbax, chex, numpy and
scipy plus the carried files in `benchmarks/gpu_assets/` (see `benchmarks/gpu_recipe.py`):
  python benchmarks/gpu_recipe.py --out $OUT               (one GPU: about 8 minutes in all)
  python benchmarks/gpu_recipe.py --tiny --out /tmp/gpu_tiny   (CPU smoke run: `gpu.py:tiny`)

There is no dataset: every step trains on a fresh batch made on the device (`data` group, drawn
`batches_per_draw` at a time; no example is seen twice): clean images of
the mixed generator (`mri_jax.data.mixed`, the settings of the `mixed128` build), the simulator
with the 'wide' ranges (the coil count and coil model drawn per chunk of `coil_groups` examples,
as the build draws them per subject), the field of view / zero background, then JAX N4 with the
model's `n4_iterations` — all inside jit. Same network family as `configs/mixed.py`, wider (AE
32-64-128 and UNet 48-96-192 against 16-32-64 and 32-64-128; embedding 128): 5.4 M parameters
against 2.0 M, exported weights ≈ 21 MB (under the 30 MB shipping limit); batch 64 (8×).

Size estimate (how the step counts were chosen; no GPU was at hand, so this is an estimate):
- FLOPs per training step, XLA's cost analysis of the lowered steps at batch 64 / 128²
  (`gpu_recipe.py --estimate`): AE stage 0.98 TFLOP, diffusion 0.57, fidelity 1.42. The
  on-device draw (4 batches) reports 0.02 TFLOP, an undercount (loop bodies, e.g. N4's
  iterations, are counted once) but small beside the steps either way.
- Measured on the 2-core CPU at the tiny size below (0.7 / 1.2 / 1.3 GFLOP per step, with a
  background training on the same cores): 57 / 53 / 84 ms per step, i.e. 12–23 GFLOP/s, and
  71 ms per batch for the generator + simulator + N4. By FLOPs the run below (5,650 TFLOP)
  would take ≈ 4 days on that CPU; the ratio says nothing about the GPU's own rate.
- H200: dense TF32 peak ≈ 0.5 PFLOP/s; convolutions of 32–256 channels at 128²–32² typically
  reach 5–15% of it, 25–75 TFLOP/s: 75–225 s of arithmetic for 2,500 + 2,500 + 1,250 steps.
  The batch draw is latency-bound (≈ 200 sequential N4 iterations of small kernels; guessed
  20–50 ms per draw of 4 batches): 30–80 s more. Compilation (the generator with its 12 simulator
  branches, the stages' steps; the tiny generator took 61 s to compile on the CPU) guessed 60–120 s;
  evaluation ≤ 100 s (the script stops the real-scan part when the budget is spent).
  Total ≈ 265–525 s, middle ≈ 395 s.
Measured on one H200 (2026-11-30, jax 0.11.2, `python benchmarks/gpu_recipe.py --out $OUT
--budget-s 470`; benchmarks/RESULTS.md, "fifteenth pass"): the batch generator compiled in 110 s
and the three stages' steps in 35 s; 29 / 41 / 31 ms per AE / diffusion / fidelity step with the
draws included (≈ 34 / 14 / 46 TFLOP/s by the counts above), 21 steps/s. The calibration scaled
the counts by 0.80 (2,012 / 2,012 / 1,006 steps, trained in 230 s); the whole run took 522 s.
The joint stage is off here, as in the shipped config (on the CPU it did not help on real scans:
benchmarks/RESULTS.md, sixth pass); `--set train.joint_steps=N` adds it (its step is about the
diffusion and fidelity steps together, ≈ 2 TFLOP at batch 64). The tiny variant keeps 4 joint
steps, so the CPU smoke run goes through that stage's wiring.
Because the spread is wide, the script measures the real step times after compiling and, when
the counts below would overrun its budget (`--budget-s`, default 480 s for the whole run) or use
less than 2/3 of it, rescales all the stages by one factor and compiles the steps again
(`--budget-s 0` trains exactly these counts, for runs that must repeat). results.json records
the counts used.
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
  c.model.unet_channels = (48, 96, 192)
  c.model.emb = 128
  c.model.fidelity = True
  c.model.fidelity_residual = True
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
    c.train.update(dict(batch=8, ae_steps=6, diffusion_steps=6, fidelity_steps=4, joint_steps=4, log_every=2))
  elif arg not in (None, ""):
    raise ValueError(f"unknown gpu variant {arg!r} (known: tiny)")
  return c
