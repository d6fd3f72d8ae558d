"""Multi-host set-up: `jax.distributed.initialize` before any JAX computation.

`initialize(distributed=True)` lets JAX detect the cluster (Cloud TPU pods, SLURM, Open MPI);
`coordinator` + `num_processes` + `process_id` set it explicitly (e.g. several processes on one
machine). CPU collectives go through gloo.

JAX ends the whole process (a C++ abort, not an exception) when its coordinator cannot be reached
within `initialization_timeout`, so an explicit set-up is checked first, with one line and exit 2
for what is the user's to fix: process 0 must be able to bind the coordinator's port, and every
other process must reach HOST:PORT within `timeout` seconds (default `EXPLICIT_TIMEOUT_S`; process
0 may start later than the others). The same `timeout` is JAX's `initialization_timeout` (for a
detected cluster default JAX's own, 300 s).
"""

from __future__ import annotations

import socket
import time

from mri_jax.errors import UserInputError

EXPLICIT_TIMEOUT_S = 60  # an explicit coordinator: how long the other processes wait for process 0


def _host_port(coordinator: str) -> tuple[str, int]:
  host, sep, port = coordinator.rpartition(":")
  host = host[1:-1] if host.startswith("[") and host.endswith("]") else host  # [IPv6]:port
  if not sep or not host or not port.isdigit() or not 1 <= int(port) <= 65535:
    raise UserInputError(f"--coordinator must be HOST:PORT with a port in 1-65535, not {coordinator!r}")
  return host, int(port)


def _check_port_free(port: int) -> None:
  """Process 0 serves the coordinator on `port` (all interfaces, as JAX binds it)."""
  with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
    try:
      s.bind(("", port))
    except OSError as err:
      raise UserInputError(f"process 0 cannot serve the coordinator on port {port} ({err.strerror or err}); "
                           "choose another port in --coordinator") from None


def _wait_for(host: str, port: int, timeout: float) -> None:
  """Returns once HOST:PORT accepts a TCP connection; refuses after `timeout` seconds."""
  deadline = time.monotonic() + timeout
  while True:
    try:
      with socket.create_connection((host, port), timeout=max(0.1, min(2.0, deadline - time.monotonic()))):
        return
    except socket.gaierror:
      raise UserInputError(f"--coordinator host {host!r} is not known (DNS); check --coordinator") from None
    except OSError:
      if time.monotonic() >= deadline:
        raise UserInputError(f"the coordinator {host}:{port} did not answer within {timeout:g} s; start "
                             "process 0 there, or check --coordinator / --init-timeout") from None
      time.sleep(0.25)


def initialize(*, distributed: bool = False, coordinator: str | None = None, num_processes: int | None = None,
               process_id: int | None = None, timeout: float | None = None) -> bool:
  """Initialises `jax.distributed` when asked; returns whether it did.

  Args:
    distributed: let JAX detect the cluster.
    coordinator, num_processes, process_id: an explicit set-up (the three go together).
    timeout: seconds to wait for the coordinator (default: `EXPLICIT_TIMEOUT_S` for an explicit
      set-up, JAX's 300 s for a detected cluster).

  Raises:
    UserInputError: an incomplete or inconsistent explicit set-up, a port process 0 cannot bind,
      a coordinator that does not answer within `timeout`, or no cluster to detect.
  """
  explicit = (coordinator, num_processes, process_id)
  if not distributed and all(v is None for v in explicit):
    return False
  if any(v is not None for v in explicit) and any(v is None for v in explicit):
    raise UserInputError("--coordinator, --num-processes and --process-id go together (or use --distributed "
                         "alone to let JAX detect the cluster)")
  if timeout is not None and not timeout > 0:
    raise UserInputError(f"--init-timeout must be a positive number of seconds, not {timeout}")
  if coordinator is not None:
    if num_processes < 1:
      raise UserInputError(f"--num-processes must be ≥ 1, not {num_processes}")
    if not 0 <= process_id < num_processes:
      raise UserInputError(f"--process-id must be in [0, {num_processes}), not {process_id}")
    host, port = _host_port(coordinator)
    timeout = EXPLICIT_TIMEOUT_S if timeout is None else timeout
    if process_id == 0:
      _check_port_free(port)
    else:
      _wait_for(host, port, timeout)
  import jax

  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  extra = {} if timeout is None else {"initialization_timeout": max(1, round(timeout))}
  try:
    jax.distributed.initialize(coordinator_address=coordinator, num_processes=num_processes, process_id=process_id,
                               **extra)
  except (RuntimeError, ValueError) as err:  # no cluster detected, called twice
    lines = [line for line in str(err).splitlines() if line.strip()]
    raise UserInputError(f"jax.distributed could not start ({lines[0][:200] if lines else type(err).__name__}); "
                         "check --coordinator / the cluster environment") from None
  return True
