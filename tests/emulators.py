"""A local GCS API server (gcp-storage-emulator) for tests and benches: nothing leaves localhost."""

from __future__ import annotations

import dataclasses
import os
import socket
import subprocess
import sys
import time
import urllib.request


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclasses.dataclass
class GcsEmulator:
    process: subprocess.Popen
    url: str

    @property
    def env(self) -> dict[str, str]:
        """The settings that point each client at this server."""
        return {
            "STORAGE_EMULATOR_HOST": self.url,
            "TENSORSTORE_GCS_HTTP_URL": self.url,
            "FSSPEC_GCS_TOKEN": "anon",
            "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false",
            "NO_GCE_CHECK": "true",
            "GCE_METADATA_HOST": "127.0.0.1:9",
            "GCE_METADATA_IP": "127.0.0.1:9",
        }

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()


def start_gcs_emulator(data_dir, *, bucket: str, timeout: float = 30.0) -> GcsEmulator:
    port = free_port()
    server = os.path.join(os.path.dirname(os.path.abspath(__file__)), "gcs_emulator_server.py")
    cmd = [sys.executable, server, "-d", os.fspath(data_dir), "start"]
    cmd += ["--host", "127.0.0.1", "--port", str(port), "--default-bucket", bucket, "--quiet"]
    process = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + timeout
    while True:
        try:
            urllib.request.urlopen(f"{url}/storage/v1/b/{bucket}", timeout=2).read()
            return GcsEmulator(process, url)
        except OSError:
            if process.poll() is not None or time.time() > deadline:
                process.kill()
                raise RuntimeError(f"the GCS emulator did not start: {' '.join(cmd)}") from None
            time.sleep(0.2)
