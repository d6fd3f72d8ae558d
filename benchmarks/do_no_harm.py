"""Do no harm: the restorer on real scans that need little or nothing done (issue 15's targets).

Three inputs per real-scan group (`mri_jax.realscans`, at most 8 slices each), scored against the
scan itself inside its foreground (masked SSIM / PSNR after normalising by the foreground mean,
as `mri-jax evaluate` scores):
- clean: the scan as stored (nothing to fix: the output should stay ≥ 0.95 SSIM, or at least as
  high as the best classic method);
- noise only: Rician noise (σ 3 % of the foreground mean), no field — compared with dipy's NLM;
- field only: the independent model's order-3 polynomial log field, no added noise — the output
  should be no worse than the input.
Methods: the input itself, SimpleITK N4 (shrink 4), N4 + BM3D (or N4 + scikit-image NLM when bm3d
is missing), dipy's Rician NLM (noise-only rows), and the restorer (K = 1).

Run:  python benchmarks/do_no_harm.py [--checkpoint DIR] [--slices 8] [--out do_no_harm.json]
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from mri_jax import evaluate, realscans, restore


def _inputs(scan: realscans.Scan, rng: np.random.Generator) -> dict[str, np.ndarray]:
  clean = scan.clean.astype(np.float64)
  sigma = 0.03 * np.array([c[m].mean() for c, m in zip(clean, scan.mask)])[:, None, None]
  noise = np.abs(clean + sigma * (rng.standard_normal(clean.shape) + 1j * rng.standard_normal(clean.shape)))
  u, v = realscans.object_coordinates(scan.mask.any(axis=0))
  field = np.stack([realscans.polynomial_log_field(u, v, rng.uniform(-1, 1, 9) * 0.3) for _ in clean])
  field /= np.array([f[m].mean() for f, m in zip(field, scan.mask)])[:, None, None]
  return {"clean": scan.clean, "noise only": noise.astype(np.float32), "field only": (clean * field).astype(np.float32)}


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--checkpoint", help="restorer weights (default: the shipped ones)")
  p.add_argument("--slices", type=int, default=8)
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--out", default="do_no_harm.json")
  args = p.parse_args()
  model = restore.load_model(args.checkpoint)
  rng = np.random.default_rng(args.seed)
  rows = []
  t0 = time.perf_counter()
  for scan in realscans.load(realscans.GROUPS, args.slices):
    for kind, x in _inputs(scan, rng).items():
      ts = evaluate.TestSet(scan.title, scan.clean, x, np.ones_like(x), scan.mask, np.zeros(len(x), np.float32))
      n4_img, _ = evaluate.n4_sitk_slices(x)
      bm = evaluate.bm3d_slices(n4_img)
      out = {"input": x, "N4": n4_img,
             "N4 + BM3D" if bm is not None else "N4 + NLM (scikit-image)": bm[0] if bm is not None
             else evaluate.nlm_skimage(n4_img)[0],
             "restorer K = 1": evaluate.run_restorer(model, x, 1)[0]}
      if kind == "noise only":
        out["NLM (dipy, Rician)"] = evaluate.nlm_dipy(x)[0]
      for name, img in out.items():
        s = evaluate.score(img, ts)
        rows.append({"group": scan.key, "input": kind, "method": name, "ssim": s["ssim"], "psnr": s["psnr"]})
      print(scan.key, kind, " ".join(f"{r['method']} {r['ssim']:.3f}" for r in rows[-len(out):]), flush=True)
  summary = {}
  for kind in ("clean", "noise only", "field only"):
    methods = sorted({r["method"] for r in rows if r["input"] == kind})
    summary[kind] = {m: {"ssim_mean": float(np.mean([r["ssim"] for r in rows if r["input"] == kind and r["method"] == m])),
                         "ssim_min": float(np.min([r["ssim"] for r in rows if r["input"] == kind and r["method"] == m])),
                         "psnr_mean": float(np.mean([r["psnr"] for r in rows if r["input"] == kind and r["method"] == m]))}
                     for m in methods}
  report = {"model": model.source, "seconds": time.perf_counter() - t0, "summary": summary, "rows": rows}
  with open(args.out, "w") as f:
    json.dump(report, f, indent=2)
  for kind, methods in summary.items():
    print(f"\n{kind}: " + "; ".join(f"{m} {v['ssim_mean']:.3f} (min {v['ssim_min']:.3f}) / {v['psnr_mean']:.1f} dB"
                                    for m, v in methods.items()))


if __name__ == "__main__":
  main()
