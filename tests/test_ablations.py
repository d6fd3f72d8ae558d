"""`mri-jax ablations`: one table (markdown / CSV / plot) from training run folders."""

import json

import pytest

from tests.conftest import run_cli


@pytest.mark.xdist_group("full_run")  # trained once: see conftest.full_run
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
  assert run_cli(["ablations", str(runs), "--markdown", str(out / "t.md"), "--csv", str(out / "t.csv"),
                   "--plot", str(out / "t.png")], capsys)[0] == 0
  table = (out / "t.md").read_text()
  last = [r for r in full_run["history"] if r["stage"] == "eval_diffusion"][-1]
  lines = [l for l in table.splitlines() if l.startswith("| base") or l.startswith("| pixel")]
  assert len(lines) == 2 and "| pixel | pixel |" in lines[1]
  assert f"{last['restored_ssim']:.4f}" in lines[0] and f"{last['n4_psnr']:.2f}" in lines[0]
  rows = (out / "t.csv").read_text().splitlines()
  assert rows[0].startswith("run,space,n4_cond") and len(rows) == 3
  assert (out / "t.png").read_bytes()[:4] == b"\x89PNG" and (out / "t.md").read_text() in table
  code, _, err = run_cli(["ablations", str(tmp_path / "none")], capsys)
  assert code == 2 and "does not exist" in err
  (tmp_path / "file").write_text("x")  # a file where the output folder should be
  code, _, err = run_cli(["ablations", str(runs), "--markdown", str(tmp_path / "file" / "t.md")], capsys)
  assert code == 2 and "cannot create the folder" in err and err.count("\n") == 1
