"""Multi-host training: two `jax.distributed` processes on localhost (CPU collectives via gloo)
train the tiny config through `mri-jax train` and agree with a single-process run.

With `data.process_sharding=global` every process walks the same global batches and keeps its
slice, so the 2-process run (1 device each) sees exactly the batches of a 1-process run on 2
devices; the losses then differ only by the order of the cross-process gradient reduction.
"""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np

from mri_jax import cli, config, train

ROOT = Path(__file__).resolve().parents[1]
OVERRIDES = ["--config.train.ae_steps=3", "--config.train.diffusion_steps=3", "--config.train.log_every=1",
             "--config.train.checkpoint_every=3", "--config.train.eval_every=3",
             "--config.data.process_sharding=global"]


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def test_two_processes_agree_with_one_process(tiny_dataset, tmp_path):
  data_dir, _ = tiny_dataset
  overrides = OVERRIDES + [f"--config.data.data_dir={data_dir}"]
  cfg = config.load("configs/tiny.py", overrides)
  single = train.train(cfg, tmp_path / "single", devices=jax.devices()[:2], log=lambda m: None)["history"]

  workdir, port = tmp_path / "multi", _free_port()
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1", JAX_PLATFORMS="cpu")
  procs = [subprocess.Popen([sys.executable, "-m", "mri_jax", "train", "--config", str(ROOT / "configs/tiny.py"),
                             "--workdir", str(workdir), *overrides, "--coordinator", f"localhost:{port}",
                             "--num-processes", "2", "--process-id", str(i)],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
           for i in range(2)]
  outs = [p.communicate(timeout=600)[0] for p in procs]
  for p, out in zip(procs, outs):
    assert p.returncode == 0, out[-3000:]
  assert "step 6/6" in outs[0] and "step 6/6" not in outs[1]  # process 0 alone logs

  rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  multi = {(r["step"], r["stage"]): r for r in rows}
  assert len(multi) == len(rows)  # one writer: no duplicated rows
  for r in single:
    got = multi[(r["step"], r["stage"])]
    for k, v in r.items():
      if k not in ("step", "stage"):
        np.testing.assert_allclose(got[k], v, rtol=1e-3, atol=1e-5, err_msg=f"{k} at step {r['step']}")
  assert sorted(p.name for p in (workdir / "samples").glob("*.png")) == ["step_0000003_ae.png",
                                                                         "step_0000006_diffusion.png"]
  assert (workdir / "checkpoints" / "6").is_dir()


def test_distributed_flags_are_checked(capsys):
  code = cli.main(["train", "--config", str(ROOT / "configs/tiny.py"), "--workdir", "unused",
                   "--coordinator", "localhost:1"])
  assert code == 2 and "go together" in capsys.readouterr().err
