"""Run a snippet in a fresh Python process that sees N fake CPU devices.

XLA reads ``--xla_force_host_platform_device_count`` once, when the backend starts, so
multi-device checks run in a subprocess instead of reconfiguring the test process.
"""

import os
import subprocess
import sys
import textwrap


def run_with_devices(code: str, num_devices: int = 8, timeout: float = 600.0) -> str:
  env = dict(os.environ)
  env["XLA_FLAGS"] = (
    env.get("XLA_FLAGS", "") + f" --xla_force_host_platform_device_count={num_devices}"
  ).strip()
  env["JAX_PLATFORMS"] = "cpu"
  result = subprocess.run(
    [sys.executable, "-c", textwrap.dedent(code)],
    env=env,
    capture_output=True,
    text=True,
    timeout=timeout,
  )
  if result.returncode != 0:
    raise AssertionError(
      f"subprocess with {num_devices} devices failed ({result.returncode}):\n"
      f"--- stdout\n{result.stdout[-4000:]}\n--- stderr\n{result.stderr[-4000:]}"
    )
  return result.stdout
