"""Streaming upload: ``POST /uploads`` of a 1 GiB file, against ``cat`` on the same disk.

    .venv/bin/python bench/upload.py [--size-mib 1024]

Renders the template with the ``uploads`` feature (SQLite), writes a file of random bytes in
a temporary directory and times ``cat big.bin > copy.bin`` there (``sync`` first; three
times, the median counts: it varies with the machine's load). Then it serves the app
(uploads stored in the same directory), checks that the process listening on the port is
the one started (one worker, no children), and uploads the file with ``curl -F
file=@big.bin``, which streams it from disk. Reported: wall time and MiB/s, the
ratio to ``cat``, the server's peak RSS (VmHWM) before and after and its growth, CPU used by
the server and by curl, and whether the stored file and the answer's ``sha256`` and
``size`` match the source. Targets: growth <= 16 MiB and >= 70 % of cat's throughput.

Every big file is removed at the end, on failure and on Ctrl-C too. Prints a summary and,
as the last line, every figure as JSON.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from _common import (
    BenchError,
    Project,
    alembic_upgrade,
    free_port,
    interrupt_on_sigterm,
    load_average,
    main_with_cleanup,
    proc_cmdline,
    proc_cpu_seconds,
    proc_status_kib,
    rendered_project,
    run,
    serve,
    server_pid,
    temp_database,
    time_limit,
)

DATA = {"project_name": "Bench Service", "database": "sqlite", "features": ["uploads"]}
MIB = 1024 * 1024
CHUNK = 8 * MIB
MAX_GROWTH_MIB = 16.0
TARGET_RATIO = 0.7
COPY_TIMEOUT = 600.0
UPLOAD_TIMEOUT = 900
SAMPLE_SECONDS = 0.05
DISK_MARGIN = 1024 * MIB
CAT_RUNS = 3


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mib", default=1024, type=int, help="size of the uploaded file")
    return parser.parse_args(argv)


def mib(n_bytes: float) -> float:
    return n_bytes / MIB


# --- files ----------------------------------------------------------------------------------


def make_file(path: Path, size: int) -> str:
    """Write ``size`` random bytes to ``path``; returns their sha256."""
    digest = hashlib.sha256()
    with time_limit(COPY_TIMEOUT, f"writing {path}"), path.open("wb") as handle:
        left = size
        while left:
            chunk = os.urandom(min(CHUNK, left))
            digest.update(chunk)
            handle.write(chunk)
            left -= len(chunk)
    return digest.hexdigest()


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with time_limit(COPY_TIMEOUT, f"hashing {path}"), path.open("rb") as handle:
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def sync_disk() -> None:
    run(["sync"], timeout=COPY_TIMEOUT)


def check_space(directory: Path, size: int) -> None:
    """Room for the source, cat's copy and the upload at once, plus a margin."""
    free = shutil.disk_usage(directory).free
    needed = 3 * size + DISK_MARGIN
    if free < needed:
        raise BenchError(f"{directory}: {mib(free):.0f} MiB free, {mib(needed):.0f} MiB needed")


@contextlib.contextmanager
def scratch_dir() -> Iterator[Path]:
    """A temporary directory whose big files go whatever happens (said when they do)."""
    path = Path(tempfile.mkdtemp(prefix="bench-upload-data-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
        print(f"   removed {path}", flush=True)


def cat_once(source: Path, size: int) -> float:
    """Seconds for ``cat source > copy`` beside it (after ``sync``); the copy is removed."""
    copy = source.with_name("copy.bin")
    sync_disk()
    try:
        started = time.perf_counter()
        run(["sh", "-c", 'cat "$1" > "$2"', "sh", source, copy], timeout=COPY_TIMEOUT)
        seconds = time.perf_counter() - started
        if copy.stat().st_size != size:
            raise BenchError(f"cat copied {copy.stat().st_size} bytes, not {size}")
    finally:
        copy.unlink(missing_ok=True)
    sync_disk()  # the copy's dirty pages, freed or not, are not the upload's to write
    return seconds


def cat_baseline(source: Path, size: int) -> dict[str, Any]:
    """``cat`` a few times (it varies with the machine's load); the median counts."""
    runs = [cat_once(source, size) for _ in range(CAT_RUNS)]
    seconds = statistics.median(runs)
    return {
        "seconds": round(seconds, 3),
        "mib_s": round(mib(size) / seconds, 1),
        "runs_s": [round(r, 3) for r in runs],
    }


# --- the upload -----------------------------------------------------------------------------


@dataclass
class Upload:
    seconds: float
    status: int
    body: dict[str, Any]
    curl_report: str
    curl_cpu_seconds: float
    server_cpu_seconds: float
    max_rss_kib: int


def upload(base: str, source: Path, pid: int, workdir: Path) -> Upload:
    """POST ``source`` with curl; samples the server's VmRSS until curl is done."""
    answer = workdir / "response.json"
    write_out = "%{http_code} pretransfer=%{time_pretransfer}s total=%{time_total}s"
    cmd = [
        "curl",
        "-sS",
        "--max-time",
        str(UPLOAD_TIMEOUT),
        "-o",
        str(answer),
        "-w",
        write_out,
        "-F",
        f"file=@{source};type=application/octet-stream",
        f"{base}/uploads",
    ]
    sync_disk()
    children_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    server_before = proc_cpu_seconds(pid)
    max_rss = proc_status_kib(pid, "VmRSS")
    started = time.perf_counter()
    curl = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        while True:
            max_rss = max(max_rss, proc_status_kib(pid, "VmRSS"))
            with contextlib.suppress(subprocess.TimeoutExpired):
                curl.wait(timeout=SAMPLE_SECONDS)  # returns as soon as curl is done
                break
        seconds = time.perf_counter() - started
        out, err = curl.communicate(timeout=10)
    finally:
        if curl.poll() is None:
            curl.kill()
            curl.wait(timeout=10)
    server_cpu = proc_cpu_seconds(pid) - server_before
    children_after = resource.getrusage(resource.RUSAGE_CHILDREN)
    curl_cpu = (children_after.ru_utime - children_before.ru_utime) + (
        children_after.ru_stime - children_before.ru_stime
    )
    if curl.returncode != 0:
        raise BenchError(f"curl exited {curl.returncode}: {err.strip()} {out.strip()}")
    status_text, _, report = out.strip().partition(" ")
    text = answer.read_text() if answer.exists() else ""
    try:
        body = json.loads(text)
    except ValueError:
        body = {"raw": text[:500]}
    return Upload(
        seconds=seconds,
        status=int(status_text),
        body=body,
        curl_report=report,
        curl_cpu_seconds=curl_cpu,
        server_cpu_seconds=server_cpu,
        max_rss_kib=max_rss,
    )


def app_env(project: Project, url: str, port: int, upload_dir: Path, size: int) -> dict[str, str]:
    return project.serving_env(
        url,
        port,
        UPLOAD_DIR=str(upload_dir),
        UPLOAD_MAX_BYTES=str(max(2 * size, 2048 * MIB)),
        UPLOAD_ALLOWED_TYPES='["application/octet-stream"]',
    )


def verify(done: Upload, size: int, sha256: str, upload_dir: Path) -> dict[str, Any]:
    """Compare the answer and the stored file with the source."""
    if done.status != 201:
        raise BenchError(f"upload answered {done.status}: {done.body}")
    key = str(done.body.get("id", "")).replace("-", "")
    stored = upload_dir / key
    stored_size = stored.stat().st_size if key and stored.is_file() else None
    stored_sha = file_sha256(stored) if stored_size is not None else None
    return {
        "answer_size_ok": done.body.get("size") == size,
        "answer_sha256_ok": done.body.get("sha256") == sha256,
        "stored_size_ok": stored_size == size,
        "stored_sha256_ok": stored_sha == sha256,
        "stored_path": str(stored),
    }


def serve_and_upload(
    project: Project, workdir: Path, source: Path, size: int, sha256: str
) -> dict[str, Any]:
    upload_dir = workdir / "uploads"
    with temp_database(project, workdir, "bench_upload") as url:
        alembic_upgrade(project, url)
        port = free_port()
        env = app_env(project, url, port, upload_dir, size)
        cmd: list[str | Path] = [project.python, "-m", project.package]
        with serve(cmd, env, port, cwd=project.path) as base:
            pid = server_pid(port)
            cmdline = proc_cmdline(pid)
            if f"-m {project.package}" not in cmdline:
                raise BenchError(f"pid {pid} listening on {port} is {cmdline!r}")
            print(f"   server pid {pid} ({cmdline}) listens on {port}, no children", flush=True)
            hwm_before = proc_status_kib(pid, "VmHWM")
            rss_before = proc_status_kib(pid, "VmRSS")
            print(f"   upload {mib(size):.0f} MiB with curl -F to {base}/uploads", flush=True)
            done = upload(base, source, pid, workdir)
            hwm_after = proc_status_kib(pid, "VmHWM")
            rss_after = proc_status_kib(pid, "VmRSS")
        checks = verify(done, size, sha256, upload_dir)
        stored = Path(checks["stored_path"])
        stored.unlink(missing_ok=True)
    return {
        "seconds": round(done.seconds, 3),
        "mib_s": round(mib(size) / done.seconds, 1),
        "status": done.status,
        "curl": done.curl_report,
        "server_pid": pid,
        "vmhwm_before_mib": round(hwm_before / 1024, 1),
        "vmhwm_after_mib": round(hwm_after / 1024, 1),
        "vmhwm_growth_mib": round((hwm_after - hwm_before) / 1024, 1),
        "vmrss_before_mib": round(rss_before / 1024, 1),
        "vmrss_max_sampled_mib": round(done.max_rss_kib / 1024, 1),
        "vmrss_after_mib": round(rss_after / 1024, 1),
        "server_cpu_s": round(done.server_cpu_seconds, 2),
        "server_cpu_pct": round(100 * done.server_cpu_seconds / done.seconds),
        "curl_cpu_s": round(done.curl_cpu_seconds, 2),
        "answer": {k: v for k, v in done.body.items() if k in ("id", "size", "sha256")},
        **{k: v for k, v in checks.items() if k != "stored_path"},
    }


def bench(args: argparse.Namespace) -> dict[str, Any]:
    size = args.size_mib * MIB
    print("== render (uploads, sqlite), uv sync", flush=True)
    with rendered_project(DATA, prefix="bench-upload-") as project, scratch_dir() as workdir:
        check_space(workdir, size)
        source = workdir / "big.bin"
        print(f"== write {args.size_mib} MiB of random bytes to {source}", flush=True)
        started = time.perf_counter()
        sha256 = make_file(source, size)
        print(f"   {time.perf_counter() - started:.1f} s, sha256 {sha256}", flush=True)
        print(f"== baseline: (sync; cat big.bin > copy.bin) x {CAT_RUNS}", flush=True)
        cat = cat_baseline(source, size)
        runs = ", ".join(f"{r:.2f}" for r in cat["runs_s"])
        print(f"   {runs} s; median {cat['seconds']:.2f} s, {cat['mib_s']:.0f} MiB/s", flush=True)
        print("== rendered app", flush=True)
        result = serve_and_upload(project, workdir, source, size, sha256)
    return {"size_mib": args.size_mib, "sha256": sha256, "cat": cat, "upload": result}


def verdicts(result: Mapping[str, Any]) -> dict[str, bool]:
    up, cat = result["upload"], result["cat"]
    return {
        "rss_growth_ok": up["vmhwm_growth_mib"] <= MAX_GROWTH_MIB,
        "throughput_ok": up["mib_s"] >= TARGET_RATIO * cat["mib_s"],
        "integrity_ok": all(
            up[k]
            for k in ("answer_size_ok", "answer_sha256_ok", "stored_size_ok", "stored_sha256_ok")
        ),
    }


def print_summary(result: Mapping[str, Any], checks: Mapping[str, bool]) -> None:
    up, cat = result["upload"], result["cat"]
    ratio = up["mib_s"] / cat["mib_s"]

    def mark(ok: bool) -> str:
        return "ok" if ok else "MISSED"

    print(f"\nPOST /uploads, {result['size_mib']} MiB, one request (curl -F, streamed from disk)")
    print(
        f"  cat big.bin > copy.bin  {cat['seconds']:>8.2f} s {cat['mib_s']:>8.1f} MiB/s"
        f"   (median of {len(cat['runs_s'])})"
    )
    print(f"  upload (wall)           {up['seconds']:>8.2f} s {up['mib_s']:>8.1f} MiB/s")
    print(
        f"  ratio upload/cat        {ratio:>8.3f}   (target >= {TARGET_RATIO})  "
        f"{mark(checks['throughput_ok'])}"
    )
    print(
        f"  server VmHWM            before {up['vmhwm_before_mib']} MiB, after "
        f"{up['vmhwm_after_mib']} MiB, growth {up['vmhwm_growth_mib']} MiB "
        f"(target <= {MAX_GROWTH_MIB:g})  {mark(checks['rss_growth_ok'])}"
    )
    print(
        f"  server VmRSS            before {up['vmrss_before_mib']} MiB, max sampled "
        f"{up['vmrss_max_sampled_mib']} MiB, after {up['vmrss_after_mib']} MiB"
    )
    print(
        f"  CPU during the upload   server {up['server_cpu_s']} s ({up['server_cpu_pct']}% "
        f"of wall), curl {up['curl_cpu_s']} s"
    )
    print(f"  curl                    HTTP {up['status']} {up['curl']}")
    print(
        f"  integrity               answer size {up['answer_size_ok']}, answer sha256 "
        f"{up['answer_sha256_ok']}, stored size {up['stored_size_ok']}, stored sha256 "
        f"{up['stored_sha256_ok']}  {mark(checks['integrity_ok'])}",
        flush=True,
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    interrupt_on_sigterm()
    if shutil.which("curl") is None:
        raise BenchError("curl is missing (apt-get install -y curl)")
    before = load_average()
    print(f"{os.cpu_count()} CPUs, load average before {', '.join(f'{v:.2f}' for v in before)}")
    try:
        result = bench(args)
    except BenchError as exc:
        print(f"!! upload benchmark failed: {exc}", file=sys.stderr, flush=True)
        print(json.dumps({"upload": {"error": str(exc).splitlines()[0]}}))
        return 1
    after = load_average()
    checks = verdicts(result)
    print_summary(result, checks)
    print(f"load average after {', '.join(f'{v:.2f}' for v in after)}")
    summary = {
        **result,
        "ratio_to_cat": round(result["upload"]["mib_s"] / result["cat"]["mib_s"], 3),
        "targets": {"max_growth_mib": MAX_GROWTH_MIB, "min_ratio_to_cat": TARGET_RATIO},
        **checks,
        "load_average_before": before,
        "load_average_after": after,
    }
    print(json.dumps({"upload": summary}))
    return 0 if checks["integrity_ok"] else 1


if __name__ == "__main__":
    main_with_cleanup(main, "server stopped, big files and temp dirs removed")
