"""The Colab notebooks run top to bottom on CPU with tiny settings (MRI_JAX_TINY=1), and are
committed without outputs."""

import os
import time
from pathlib import Path

import nbformat
import pytest

COLAB = Path(__file__).resolve().parents[1] / "colab"
NOTEBOOKS = sorted(COLAB.glob("*.ipynb"))


def test_the_four_notebooks_exist_and_are_stripped():
  assert [p.name for p in NOTEBOOKS] == ["01_quickstart.ipynb", "02_train.ipynb", "03_ablations.ipynb",
                                         "04_simulator_in_your_code.ipynb"]
  for path in NOTEBOOKS:
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(not c.outputs and c.execution_count is None for c in code), f"{path.name} has outputs"
    assert "git" in code[0].source and "pip" in code[0].source, f"{path.name}: first cell must install"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs_with_tiny_settings(path, tiny_dataset, tmp_path, monkeypatch):
  from nbclient import NotebookClient

  data_dir, _ = tiny_dataset
  monkeypatch.setenv("MRI_JAX_TINY", "1")
  monkeypatch.setenv("MRI_JAX_DATA_DIR", str(data_dir))  # the session's tiny dataset: built once
  monkeypatch.setenv("MRI_JAX_OUT", str(tmp_path))
  nb = nbformat.read(path, as_version=4)
  t0 = time.perf_counter()
  NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(COLAB)}}).execute()
  print(f"{path.name}: {time.perf_counter() - t0:.0f} s")
  errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
  assert not errors
  text = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs)
  images = sum("image/png" in o.get("data", {}) for c in nb.cells if c.cell_type == "code" for o in c.outputs)
  if path.stem == "01_quickstart":
    assert "affine kept: True" in text and "same as restore_array: True" in text and images == 1
  elif path.stem == "02_train":
    assert "resumed from step 20" in text and (tmp_path / "my_weights" / "model.npz").is_file() and images >= 3
  elif path.stem == "03_ablations":
    table = (tmp_path / "ablations.md").read_text()
    assert all(f"| {name} |" in table for name in ("default", "no_n4", "pixel_space"))
  else:  # the gradient fit recovers the acquisition parameters
    fitted = {l.split()[0]: (float(l.split()[2]), float(l.split()[4])) for l in text.splitlines()
              if l.split()[:1] in (["b1"], ["gamma"], ["sigma"])}
    assert set(fitted) == {"b1", "gamma", "sigma"}
    for name, (got, true) in fitted.items():
      assert abs(got - true) <= 0.05 * true, (name, got, true)
