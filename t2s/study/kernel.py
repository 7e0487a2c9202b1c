"""Executing a notebook with papermill as every t2s notebook runs (train.ipynb for a run, analysis.ipynb for a report).

Light on purpose: no torch, no diffusers. A run's papermill subprocess imports only this module (`SUBPROCESS_CODE`);
the kernel it starts imports the model. Importing `t2s.study.runs` there instead cost each run about 6 s of CPU
(torch, diffusers and transformers loaded by a process that never uses them; reports/bench/bench.md).
"""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Optional, Union

import papermill
from jupyter_client import AsyncKernelManager
from traitlets import default

from t2s.config import PROJECT_ROOT

KERNEL = "python3"
IPC_PATH_MAX = 90  # a Unix socket's path must fit in about 107 bytes; the kernel's adds "-<port>"


class IpcKernelManager(AsyncKernelManager):
    """The notebook kernel reached over IPC (Unix sockets in a private temporary folder) instead of TCP on localhost:
    no other user of the machine can connect to it, and ipykernel does not warn on every start that it "is running
    over TCP without encryption". Where there are no Unix sockets (Windows), or the temporary folder's path is too
    long for one, it is jupyter_client's usual TCP kernel (and the warning comes back)."""

    ipc_folder: Optional[str] = None

    @default("transport")
    def _t2s_transport(self) -> str:
        if os.name != "posix" or len(os.path.join(tempfile.gettempdir(), "t2s-kernel-xxxxxxxx", "k")) > IPC_PATH_MAX:
            return "tcp"
        return "ipc"

    @default("ip")
    def _t2s_ip(self) -> str:
        if self.transport != "ipc":
            return super()._ip_default()
        self.ipc_folder = tempfile.mkdtemp(prefix="t2s-kernel-")  # an absolute path: the kernel's cwd differs
        return os.path.join(self.ipc_folder, "k")

    async def _async_cleanup_resources(self, restart: bool = False) -> None:
        await super()._async_cleanup_resources(restart=restart)
        if not restart and self.ipc_folder:
            shutil.rmtree(self.ipc_folder, ignore_errors=True)


def execute_notebook(notebook: Union[str, Path], output: Union[str, Path], parameters: dict) -> None:
    """Execute a notebook with papermill as every t2s notebook runs: kernel python3 on IPC (`IpcKernelManager`),
    working directory the project root, no progress bar. Raises PapermillExecutionError on a failing cell."""
    papermill.execute_notebook(str(notebook), str(output), parameters=parameters, kernel_name=KERNEL,
                               progress_bar=False, cwd=str(PROJECT_ROOT), kernel_manager_class=IpcKernelManager)


# A papermill subprocess runs the same execute_notebook; its arguments: the notebook, the output, the parameters (JSON).
SUBPROCESS_CODE = ("import json, sys; from t2s.study.kernel import execute_notebook; "
                   "execute_notebook(sys.argv[1], sys.argv[2], json.loads(sys.argv[3]))")
