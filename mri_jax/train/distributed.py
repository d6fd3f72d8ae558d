"""Multi-host set-up: `jax.distributed.initialize` before any JAX computation.

`initialize(distributed=True)` lets JAX detect the cluster (Cloud TPU pods, SLURM, Open MPI);
`coordinator` + `num_processes` + `process_id` set it explicitly (e.g. several processes on one
machine). CPU collectives go through gloo.
"""

from __future__ import annotations

from mri_jax.errors import UserInputError


def initialize(*, distributed: bool = False, coordinator: str | None = None, num_processes: int | None = None,
               process_id: int | None = None) -> bool:
  """Initialises `jax.distributed` when asked; returns whether it did.

  Raises:
    UserInputError: an incomplete or inconsistent explicit set-up, or a coordinator that cannot
      be reached.
  """
  explicit = (coordinator, num_processes, process_id)
  if not distributed and all(v is None for v in explicit):
    return False
  if any(v is not None for v in explicit) and any(v is None for v in explicit):
    raise UserInputError("--coordinator, --num-processes and --process-id go together (or use --distributed "
                         "alone to let JAX detect the cluster)")
  if num_processes is not None and num_processes < 1:
    raise UserInputError(f"--num-processes must be ≥ 1, not {num_processes}")
  if num_processes is not None and not 0 <= process_id < num_processes:
    raise UserInputError(f"--process-id must be in [0, {num_processes}), not {process_id}")
  import jax

  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  try:
    jax.distributed.initialize(coordinator_address=coordinator, num_processes=num_processes, process_id=process_id)
  except (RuntimeError, ValueError) as err:  # unreachable coordinator, no cluster detected
    lines = [line for line in str(err).splitlines() if line.strip()]
    raise UserInputError(f"jax.distributed could not start ({lines[0][:200] if lines else type(err).__name__}); "
                         "check --coordinator / the cluster environment") from None
  return True
