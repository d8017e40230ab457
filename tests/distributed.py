"""Launch real multi-process CPU runs with Accelerate (gloo)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_env(**extra) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", ACCELERATE_USE_CPU="1", WANDB_SILENT="true")
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    env.update(extra)
    return env


def accelerate_launch(
    script_args: list[str],
    processes: int = 2,
    timeout: float = 300,
    env: dict | None = None,
    check: bool = True,
):
    """``accelerate launch --multi_gpu`` with CPU processes: the combination that really
    starts N processes (``--cpu --num_processes 2`` silently starts one)."""
    cmd = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--multi_gpu",
        "--num_processes",
        str(processes),
        "--num_machines",
        "1",
        "--main_process_port",
        str(free_port()),
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        *script_args,
    ]
    proc = subprocess.run(
        cmd, env=env or cpu_env(), cwd=ROOT, capture_output=True, text=True, timeout=timeout
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"launch failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def python_run(
    script_args: list[str], timeout: float = 300, env: dict | None = None, check: bool = True
):
    proc = subprocess.run(
        [sys.executable, *script_args],
        env=env or cpu_env(),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"run failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc
