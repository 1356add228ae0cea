"""S3 down in the middle of an upload, end to end: the API as a real process, a SeaweedFS of
the test's own (started, stopped and started again on the same data directory), a
multipart upload of a few MiB cut by the outage. The client gets 503, no row is stored, and
once the store is back nothing of the upload remains under the prefix: no object, no
unfinished multipart upload (the app's storage aborts the upload its outage left)."""

import contextlib
import http.client
import json
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from harness import BIN, HOST, Combo, free_port, http_get, run, serve, start, stop, wait_ready

from .checks import Renders

MIB = 1024 * 1024
PART_BYTES = 5 * MIB  # S3's smallest part
BUCKET = "outage"
PREFIX = "uploads/"
BOUNDARY = "outage-boundary-3d1f0c"
WEED_PORTS = (
    "master.port",
    "master.port.grpc",
    "volume.port",
    "volume.port.grpc",
    "filer.port",
    "filer.port.grpc",
    "s3.port",
    "s3.port.grpc",
    "webdav.port",
)

# Run with the project's own Python: what is under the prefix, through aiobotocore (the
# client the render uses): objects, and unfinished multipart uploads with their part count.
LIST_PREFIX = """
import asyncio, json, sys
from aiobotocore.session import get_session

async def main(endpoint: str, bucket: str, prefix: str) -> None:
    async with get_session().create_client(
        "s3", endpoint_url=endpoint, region_name="us-east-1",
        aws_access_key_id="test", aws_secret_access_key="test",
    ) as s3:
        listing = await s3.list_objects_v2(Bucket=bucket, Prefix=prefix)
        pending = await s3.list_multipart_uploads(Bucket=bucket, Prefix=prefix)
        uploads = []
        for upload in pending.get("Uploads", []):
            parts = await s3.list_parts(
                Bucket=bucket, Key=upload["Key"], UploadId=upload["UploadId"]
            )
            uploads.append({"key": upload["Key"], "parts": len(parts.get("Parts", []))})
        objects = [item["Key"] for item in listing.get("Contents", [])]
        print(json.dumps({"objects": objects, "uploads": uploads}))

asyncio.run(main(*sys.argv[1:]))
"""


class SeaweedFS:
    """``weed mini`` on ports of its own (the suite's shared server is left alone)."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.ports = {name: free_port() for name in WEED_PORTS}
        self.endpoint = f"http://{HOST}:{self.ports['s3.port']}"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        command = [
            BIN / "weed",
            "mini",
            f"-dir={self.workdir}",
            f"-ip={HOST}",
            f"-ip.bind={HOST}",
            "-admin.ui=false",
            "-master.telemetry=false",
            *(f"-{name}={port}" for name, port in self.ports.items()),
        ]
        log = self.workdir / "seaweedfs.log"
        self.process = start(command, {}, cwd=self.workdir, log=log)
        wait_ready(f"{self.endpoint}/", 60, process=self.process, log=log)

    def stop(self) -> None:
        if self.process is not None:
            stop(self.process)
            self.process = None


@contextlib.contextmanager
def seaweedfs(workdir: Path) -> Iterator[SeaweedFS]:
    server = SeaweedFS(workdir)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def under_prefix(project: Path, endpoint: str) -> dict[str, Any]:
    python = project / ".venv/bin/python"
    result = run([python, "-c", LIST_PREFIX, endpoint, BUCKET, PREFIX], project, timeout=60)
    listed: dict[str, Any] = json.loads(result.stdout)
    return listed


def wait_for(what: str, condition: Any, timeout: float) -> Any:
    """Poll ``condition()`` until it returns something truthy; that value."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.3)


@pytest.mark.slow
def test_s3_outage_in_the_middle_of_an_upload_leaves_nothing(
    renders: Renders, tmp_path: Path
) -> None:
    combo = Combo("sqlite", ("uploads",), storage="s3")
    project = renders.installed(combo)
    prefix = combo.package.upper()
    port = free_port()
    database = tmp_path / "outage.db"
    data_dir = tmp_path / "seaweedfs"
    data_dir.mkdir()
    with seaweedfs(data_dir) as s3:
        env = {
            f"{prefix}_ENVIRONMENT": "development",
            f"{prefix}_DATABASE_URL": f"sqlite+aiosqlite:///{database}",
            f"{prefix}_PORT": str(port),
            f"{prefix}_LOG_LEVEL": "warning",
            f"{prefix}_S3_ENDPOINT_URL": s3.endpoint,
            f"{prefix}_S3_ACCESS_KEY_ID": "test",
            f"{prefix}_S3_SECRET_ACCESS_KEY": "test",
            f"{prefix}_S3_BUCKET": BUCKET,
            f"{prefix}_S3_KEY_PREFIX": PREFIX,
            f"{prefix}_S3_CREATE_BUCKET": "true",
            f"{prefix}_S3_PART_BYTES": str(PART_BYTES),
            f"{prefix}_S3_CLEANUP_INTERVAL_SECONDS": "1",
            f"{prefix}_HEALTH_S3_TIMEOUT_SECONDS": "1",
            f"{prefix}_UPLOAD_MAX_BYTES": str(32 * MIB),
        }
        run([project / ".venv/bin/python", "-m", "alembic", "upgrade", "heads"], project, env=env)
        python = project / ".venv/bin/python"
        log = tmp_path / "api.log"
        with serve([python, "-m", combo.package], env, port, cwd=project, log=log) as base:
            status, body = upload_with_an_outage(project, s3, port)
            assert status == 503, (body, log.read_text()[-3000:])
            error = json.loads(body)
            assert error["detail"] == "the upload storage cannot be reached: try again later"
            with sqlite3.connect(database) as connection:
                assert connection.execute("SELECT count(*) FROM uploads").fetchone() == (0,)

            # While it is down, readiness names the store.
            status, body = http_get(f"{base}/health/ready")
            assert status == 503
            assert json.loads(body)["checks"]["s3"].startswith("failed: "), body

            # The app could not abort the multipart upload either: its storage retries.
            assert "could not abort the upload of uploads/" in log.read_text()

            s3.start()  # back, on the same data directory
            # The unfinished upload survived the restart until the app's cleaner aborts it.
            wait_for(
                "no unfinished upload",
                lambda: under_prefix(project, s3.endpoint) == {"objects": [], "uploads": []},
                timeout=30,
            )
            status, body = http_get(f"{base}/health/ready")
            assert status == 200, body


def upload_with_an_outage(project: Path, s3: SeaweedFS, port: int) -> tuple[int, bytes]:
    """Send a 7 MiB file: the first 6 MiB, then (once its first part is stored) stop the
    store and send the rest. The answer's status and body."""
    head = (
        f"--{BOUNDARY}\r\n"
        'Content-Disposition: form-data; name="file"; filename="big.bin"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n"
    ).encode()
    tail = f"\r\n--{BOUNDARY}--\r\n".encode()
    first, rest = b"a" * (6 * MIB), b"b" * MIB
    connection = http.client.HTTPConnection(HOST, port, timeout=60)
    try:
        connection.putrequest("POST", "/uploads")
        connection.putheader("Content-Type", f"multipart/form-data; boundary={BOUNDARY}")
        connection.putheader("Content-Length", str(len(head) + len(first) + len(rest) + len(tail)))
        connection.endheaders()
        connection.send(head + first)
        listed = wait_for(
            "the first part to be stored",
            lambda: [u for u in under_prefix(project, s3.endpoint)["uploads"] if u["parts"]],
            timeout=30,
        )
        assert len(listed) == 1, listed
        s3.stop()  # the outage, in the middle of the multipart upload
        connection.send(rest + tail)
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()
