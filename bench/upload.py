"""Streaming upload as a user gets the project: ``POST /uploads`` of 1 GiB, against SHA-256.

    .venv/bin/python bench/upload.py [--size-mib 1024] [--runs 3]

Renders the template with its default answers (SQLite, all features), writes a file of random
bytes in a temporary directory and migrates a database. Each run then measures, on the same
file: ``hashlib.sha256`` over its bytes read in 8 MiB chunks (the work the app must do per
byte, in this process), ``cat big.bin > copy.bin`` (``sync`` first; for information), and
the upload: the app served as shipped (default settings but the upload directory, in the
same temporary directory, and the size limit), a check that the process listening on the
port is the one started (one worker, no children), and ``curl -F file=@big.bin``, which
streams the file from disk. Reported per run: wall time and MiB/s of each, the upload's
ratio to SHA-256 and to cat, the server's peak RSS (VmHWM) before and after and its growth,
CPU used by the server and by curl, and whether the stored file and the answer's ``sha256``
and ``size`` match the source; then the medians, next to the targets: >= 0.6 of SHA-256's
rate, growth <= 16 MiB.

Every big file is removed at the end, on failure and on Ctrl-C too. Ends with every figure as
one JSON line.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import resource
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from _common import (
    BenchError,
    Figures,
    Project,
    add_runs_argument,
    alembic_upgrade,
    check_line,
    main_with_cleanup,
    proc_cmdline,
    proc_cpu_seconds,
    proc_status_kib,
    ranged,
    rendered_project,
    repeat,
    run,
    run_bench,
    serve_app,
    temp_database,
    time_limit,
)

DATA = {"project_name": "Bench Service", "database": "sqlite"}  # features: the default (all)
MIB = 1024 * 1024
CHUNK = 8 * MIB
MAX_GROWTH_MIB = 16.0
MIN_SHA256_RATIO = 0.6  # the upload's MiB/s over hashlib.sha256's on the same bytes
COPY_TIMEOUT = 600.0
UPLOAD_TIMEOUT = 900
SAMPLE_SECONDS = 0.05
DISK_MARGIN = 1024 * MIB


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mib", default=1024, type=int, help="size of the uploaded file")
    add_runs_argument(parser)
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


def rate(seconds: float, size: int) -> Figures:
    return {"seconds": round(seconds, 3), "mib_s": round(mib(size) / seconds, 1)}


def sha256_once(source: Path, size: int, sha256: str) -> Figures:
    """``hashlib.sha256`` over the file, read in ``CHUNK``s, timed; the digest is checked."""
    started = time.perf_counter()
    digest = file_sha256(source)
    seconds = time.perf_counter() - started
    if digest != sha256:
        raise BenchError(f"{source}: sha256 {digest}, written as {sha256}")
    return rate(seconds, size)


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


def app_settings(upload_dir: Path, size: int) -> dict[str, str]:
    """The defaults but where uploads go and how big one may be (50 MiB by default)."""
    return {"UPLOAD_DIR": str(upload_dir), "UPLOAD_MAX_BYTES": str(max(2 * size, 2048 * MIB))}


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
    project: Project, url: str, workdir: Path, source: Path, size: int, sha256: str
) -> Figures:
    upload_dir = workdir / "uploads"
    with serve_app(project, url, **app_settings(upload_dir, size)) as app:
        pid = app.pid
        cmdline = proc_cmdline(pid)
        if f"-m {project.package}" not in cmdline:
            raise BenchError(f"pid {pid} listening on {app.port} is {cmdline!r}")
        print(f"   server pid {pid} ({cmdline}), no children; curl -F", flush=True)
        hwm_before = proc_status_kib(pid, "VmHWM")
        rss_before = proc_status_kib(pid, "VmRSS")
        done = upload(app.url, source, pid, workdir)
        hwm_after = proc_status_kib(pid, "VmHWM")
        rss_after = proc_status_kib(pid, "VmRSS")
    checks = verify(done, size, sha256, upload_dir)
    stored = Path(checks["stored_path"])
    stored.unlink(missing_ok=True)
    return rate(done.seconds, size) | {
        "status": done.status,
        "curl": done.curl_report,
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


def one_run(
    project: Project, url: str, workdir: Path, source: Path, size: int, sha256: str
) -> Figures:
    """SHA-256 alone, cat, then the upload, on the same file; ratios of this run."""
    hashed = sha256_once(source, size, sha256)
    cat = rate(cat_once(source, size), size)
    print(f"   sha256 {hashed['mib_s']} MiB/s, cat {cat['mib_s']} MiB/s", flush=True)
    sent = serve_and_upload(project, url, workdir, source, size, sha256)
    print(
        f"   upload {sent['mib_s']} MiB/s, VmHWM +{sent['vmhwm_growth_mib']} MiB, "
        f"HTTP {sent['status']}",
        flush=True,
    )
    return {
        "sha256": hashed,
        "cat": cat,
        "upload": sent,
        "ratio_to_sha256": round(sent["mib_s"] / hashed["mib_s"], 3),
        "ratio_to_cat": round(sent["mib_s"] / cat["mib_s"], 3),
    }


def bench(args: argparse.Namespace) -> Figures:
    size = args.size_mib * MIB
    print("== render (defaults: sqlite, all features), uv sync", flush=True)
    with (
        rendered_project(DATA, prefix="bench-upload-") as project,
        scratch_dir() as workdir,
        temp_database(project, workdir, "bench_upload") as url,
    ):
        alembic_upgrade(project, url)
        check_space(workdir, size)
        source = workdir / "big.bin"
        print(f"== write {args.size_mib} MiB of random bytes to {source}", flush=True)
        started = time.perf_counter()
        sha256 = make_file(source, size)
        print(f"   {time.perf_counter() - started:.1f} s, sha256 {sha256}", flush=True)
        result = repeat(
            args.runs, lambda _number: one_run(project, url, workdir, source, size, sha256)
        )
    return (
        {"size_mib": args.size_mib, "file_sha256": sha256} | result | {"checks": verdicts(result)}
    )


INTEGRITY = ("answer_size_ok", "answer_sha256_ok", "stored_size_ok", "stored_sha256_ok")


def verdicts(result: Figures) -> dict[str, bool]:
    """Targets met by the medians; integrity in every run."""
    median = result["median"]
    return {
        "rss_growth_ok": median["upload"]["vmhwm_growth_mib"] <= MAX_GROWTH_MIB,
        "throughput_ok": median["ratio_to_sha256"] >= MIN_SHA256_RATIO,
        "integrity_ok": all(run["upload"][k] for run in result["runs"] for k in INTEGRITY),
    }


def print_summary(result: Figures, args: argparse.Namespace) -> None:
    median, checks = result["median"], result["checks"]
    up = median["upload"]
    print(
        f"\nPOST /uploads, {result['size_mib']} MiB, one request (curl -F, streamed from "
        f"disk); median of {args.runs} run(s) [range]"
    )
    for label, row in (
        ("hashlib.sha256 (this process)", median["sha256"]),
        ("cat big.bin > copy.bin", median["cat"]),
        ("upload (wall)", up),
    ):
        print(f"  {label:30}{row['seconds']:>8.2f} s {row['mib_s']:>8.1f} MiB/s")
    ratio = ranged(result, "ratio_to_sha256")
    target = f">= {MIN_SHA256_RATIO:g}"
    print(check_line("upload / sha256 MiB/s", ratio, target, checks["throughput_ok"]))
    growth = f"{ranged(result, 'upload', 'vmhwm_growth_mib', digits=1)} MiB"
    target = f"<= {MAX_GROWTH_MIB:g} MiB"
    print(check_line("server VmHWM growth", growth, target, checks["rss_growth_ok"]))
    ok = checks["integrity_ok"]
    print(check_line("stored and answered sha256", "equal" if ok else "DIFFER", "equal", ok))
    print(f"  {'upload / cat MiB/s':<30}{ranged(result, 'ratio_to_cat'):>22}   (information)")
    print(
        f"  server VmHWM {up['vmhwm_before_mib']} -> {up['vmhwm_after_mib']} MiB; VmRSS "
        f"{up['vmrss_before_mib']} MiB, max sampled {up['vmrss_max_sampled_mib']} MiB, after "
        f"{up['vmrss_after_mib']} MiB"
    )
    print(
        f"  CPU during the upload: server {up['server_cpu_s']} s ({up['server_cpu_pct']}% of "
        f"wall), curl {up['curl_cpu_s']} s; curl: {result['runs'][-1]['upload']['curl']}",
        flush=True,
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if shutil.which("curl") is None:
        raise BenchError("curl is missing (apt-get install -y curl)")
    return run_bench(
        "upload",
        args,
        lambda: bench(args),
        targets={"max_growth_mib": MAX_GROWTH_MIB, "min_sha256_ratio": MIN_SHA256_RATIO},
        report=lambda result: print_summary(result, args),
        failed=lambda result: not result["checks"]["integrity_ok"],
    )


if __name__ == "__main__":
    main_with_cleanup(main, "server stopped, big files and temp dirs removed")
