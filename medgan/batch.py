"""Batch processing of whole studies: fast, resumable, bounded in memory, shardable.

A :class:`VolumeTask` (translation, segmentation, sampling...) is split into three stages that
:func:`run_batch` overlaps:

1. ``prepare(volume)`` - in background reader threads: the next ``prefetch`` scans are read and
   preprocessed while the current ones run on the model;
2. ``run(prepared)`` - in model worker threads, on the model (loaded once, ``inference_mode``);
3. ``finish(volume, prepared, result)`` and writing - in background writer threads: back to the
   input grid, written atomically (temporary name, then rename) around the page cache
   (``write_nifti(direct=True)``: a study's outputs are not read back by the batch, and copying
   them into fresh page-cache pages cost 0.4 s of kernel CPU per CT-sized output here), hashed
   as written, with a provenance sidecar.

On CPU several model workers run scans side by side, one torch thread each (see
:func:`default_workers`). At most ``max_volumes`` full-resolution volumes are being read or
written at once and the scans queued between the stages keep only their grid and canonical
tensors, so memory is bounded whatever the number of scans; headers claiming more than
``max_voxels`` are refused unread.

**Manifest and resume**: each rank appends one JSON line per scan to ``manifest.jsonl``
(``manifest-rank{r}.jsonl`` under several ranks) after its outputs are in place: status,
error, output names, SHA-256 checksums, input hash and timings. A rerun skips scans whose
latest record for the same task is ``done`` with the same task key (checkpoint checksum,
config, direction and options, see :func:`task_key`), the same input content (SHA-256) and
outputs still in place with their recorded sizes and checksums; any other scan is done again
and its outputs replaced atomically (outputs of the earlier run that the new one does not make,
such as a ``_seg`` of a run with ``--segment``, are removed). Every output is synced to the
device before its record is written. A killed run leaves only complete outputs (temporary files
never carry the final name) and redoes the rest.

**Sharding**: under ``torchrun`` (``RANK``/``WORLD_SIZE``) scan ``i`` of the planned list goes to
rank ``i % WORLD_SIZE``; every rank plans the same list, so no scan is done twice.

**Safety**: output names are built from sanitised input names inside the output folder; manifest
entries naming files outside it are ignored.
"""

from __future__ import annotations

import gc
import hashlib
import json
import logging
import os
import re
import shutil
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

import medgan
from medgan.inference import reuse_freed_memory
from medgan.io import (
    MAX_VOXELS,
    Grid,
    Volume,
    VolumeError,
    atomic_write_text,
    expand_inputs,
    list_dicom_series,
    read_volume,
    sha256_of,
    strip_image_suffix,
    write_nifti,
)
from medgan.io.dicom_write import DicomOutput

logger = logging.getLogger(__name__)


class VolumeTask(Protocol):
    """What :func:`run_batch` runs on each scan."""

    #: short name used in output file names, e.g. ``"mr2ct"``
    name: str
    #: where ``run`` computes (chooses the number of model workers)
    device: Any
    #: optional, default True: refuse NaN and constant volumes on reading (False for label maps)
    # check_values: bool

    def prepare(self, volume: Volume) -> Any:
        """Voxels (the stored dtype, e.g. int16) -> the model's input; runs in reader threads."""
        ...

    def run(self, prepared: Any) -> Any:
        """The model; called from several worker threads at once on CPU, so it must not keep state."""
        ...

    def finish(self, grid: Grid, prepared: Any, result: Any) -> dict[str, tuple[np.ndarray, type]]:
        """``{suffix: (array on the input grid, dtype)}``; ``""`` is the main output."""
        ...

    def provenance(self) -> dict: ...

    # optional: ``report(prepared, result) -> (dict, {suffix: bytes})``: per-scan fields for the
    # sidecar, and extra files (a QA figure) written as ``{stem}_{name}{suffix}``


@dataclass(frozen=True)
class ScanJob:
    """One scan: a file, or a DICOM folder and series; ``stem`` names its outputs."""

    source: Path
    stem: str
    series_uid: str | None = None
    #: the folder holds other series too (reports then name the series)
    one_of_several: bool = False

    @property
    def label(self) -> str:
        """How reports name this scan: the path, plus the series of a DICOM folder with several."""
        return f"{self.source} [series {self.series_uid}]" if self.one_of_several else str(self.source)


@dataclass
class BatchReport:
    """Outcome of a batch (this rank): written outputs per scan, failures with why, skipped scans;
    keyed by :attr:`ScanJob.label` (so each series of a DICOM folder counts)."""

    written: dict[str, list[str]] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)
    #: the batch's QA page, when one was written (``medgan translate --qa``)
    qa_page: Path | None = None

    @property
    def ok(self) -> bool:
        return not self.failed


def done_sidecars(output_dir: str | os.PathLike, task_name: str) -> list[Path]:
    """Sidecars of every scan in ``output_dir`` whose latest manifest record (any rank) for
    ``task_name`` is done, resumed runs' included: what a batch-wide page covers."""
    out = Path(output_dir)
    found = []
    for (stem, task), rec in Manifest(out, 0, 1).records().items():
        if task != task_name or rec.get("status") != "done":
            continue
        side = file_in_folder(out, f"{stem}_{task}.json")
        if side is not None and side.name in (rec.get("outputs") or []):
            found.append(side)
    return sorted(found)


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "scan"


def plan_jobs(inputs: list[str | os.PathLike], series_uid: str | None = None, series_description: str | None = None) -> list[ScanJob]:
    """Files, folders, globs and DICOM folders -> jobs with unique output stems, in input order.

    A DICOM folder holding several series gives one job per series; ``series_uid`` or
    ``series_description`` (a glob, case-insensitive) keep only matching series.
    """
    import fnmatch

    jobs: list[ScanJob] = []
    for p in expand_inputs(list(inputs)):
        if p.is_dir():
            series = list_dicom_series(p)
            if series_uid:
                series = [s for s in series if s.uid == series_uid]
            if series_description:
                series = [s for s in series if fnmatch.fnmatch(s.description.lower(), series_description.lower())]
            if not series:
                jobs.append(ScanJob(p, _safe(p.name)))  # read_volume reports why
                continue
            for s in series:
                stem = _safe(p.name) if len(series) == 1 else _safe(f"{p.name}_{s.description or s.uid[-12:]}")
                jobs.append(ScanJob(p, stem, s.uid, len(series) > 1))
        else:
            jobs.append(ScanJob(p, _safe(strip_image_suffix(p))))
    seen: dict[str, int] = {}
    for j in jobs:
        seen[j.stem] = seen.get(j.stem, 0) + 1
    out = []
    for j in jobs:
        if seen[j.stem] > 1:  # same name from different folders: add a hash of the full path
            h = hashlib.sha1(f"{j.source.resolve()}|{j.series_uid}".encode()).hexdigest()[:8]
            j = ScanJob(j.source, f"{j.stem}-{h}", j.series_uid, j.one_of_several)
        out.append(j)
    return out


def dist_env() -> tuple[int, int, int]:
    """``(rank, world_size, local_rank)`` from torchrun's environment (0, 1, 0 without it)."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("LOCAL_RANK", 0))


def rank_device(device: str = "auto") -> str:
    """The device of this rank: under torchrun with CUDA, ``"auto"`` means one GPU per local rank."""
    _, world, local_rank = dist_env()
    import torch

    if device == "auto" and world > 1 and torch.cuda.is_available():
        return f"cuda:{local_rank % torch.cuda.device_count()}"
    return device


class Manifest:
    """JSON-lines manifest of one rank, plus the records of all ranks for resuming."""

    def __init__(self, output_dir: Path, rank: int, world_size: int) -> None:
        self.dir = output_dir
        self.path = output_dir / ("manifest.jsonl" if world_size == 1 else f"manifest-rank{rank}.jsonl")
        self.lock = threading.Lock()

    def records(self) -> dict[tuple[str, str], dict]:
        """Latest record per ``(stem, task name)`` over every manifest in the folder."""
        latest: dict[tuple[str, str], dict] = {}
        for f in sorted(self.dir.glob("manifest*.jsonl")):
            for line in f.read_text(encoding="utf-8").splitlines():
                try:
                    rec = json.loads(line)
                    latest[(str(rec["stem"]), str(rec.get("task", "")))] = rec
                except (json.JSONDecodeError, KeyError, TypeError, AttributeError):
                    continue  # a line cut by a kill
        return latest

    def _outputs_intact(self, rec: dict) -> bool:
        """Every output a record names is a file in this folder with the recorded size and SHA-256."""
        sums, sizes = rec.get("sha256") or {}, rec.get("sizes") or {}
        names = rec.get("outputs") or []
        if not names or set(names) != set(sums) or set(names) != set(sizes):
            return False
        for n in names:
            p = file_in_folder(self.dir, n)
            if p is None or _size(p) != sizes[n] or sha256_of(p) != sums[n]:
                logger.warning("%s: changed or missing since it was recorded; the scan is done again", p)
                return False
        return True

    def finished(self, jobs: list[ScanJob], task_name: str, task_key: str) -> tuple[set[str], dict[str, dict]]:
        """Which ``jobs`` are done: their latest record for this task is ``done`` with the same
        task key (checkpoint, options), the same input content (SHA-256) and outputs that are
        still in place with their recorded size and checksum. Returns ``(done stems, the latest
        records of the others)``; any other record means the scan is done again."""
        records = self.records()
        done, previous = set(), {}
        for job in jobs:
            rec = records.get((job.stem, task_name))
            if rec is None:
                continue
            if (rec.get("status") == "done" and rec.get("task_key") == task_key and rec.get("series_uid") == job.series_uid
                    and _same_content(job.source, rec.get("input_sha256")) and self._outputs_intact(rec)):
                done.add(job.stem)
            else:
                previous[job.stem] = rec
        return done, previous

    def append(self, record: dict) -> None:
        line = json.dumps(record) + "\n"
        with self.lock, open(self.path, "a", encoding="utf-8") as f:
            f.write(line)
            f.flush()
            os.fsync(f.fileno())


def _same_content(path: Path, digest: str | None) -> bool:
    try:
        return digest is not None and sha256_of(path) == digest
    except (OSError, ValueError):  # gone, or not a regular file: the scan is redone and reports why
        return False


def task_key(provenance: dict) -> str:
    """SHA-256 of what decides a task's outputs besides the input: its provenance (checkpoint
    checksum, config, direction, options such as ``--segment``) and the medgan version."""
    blob = json.dumps({"provenance": provenance, "medgan": medgan.__version__}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


def _check_writable(folder: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".medgan-write-test-{os.getpid()}"
        probe.write_text("", encoding="utf-8")
        probe.unlink()
    except OSError as err:
        raise VolumeError(f"{folder}: output folder is not writable ({err})") from err


def default_workers(device: Any, n_scans: int, workers: int | None = None) -> tuple[int, int, int]:
    """``(model workers, torch threads per worker, I/O threads)`` for ``n_scans`` scans on a device.

    On CPU every core runs its own scan with one torch thread: the model, the reader and the
    writer then share the cores by the OS scheduler instead of stalling torch's OpenMP barriers
    (a multi-threaded model slowed by a background thread waits for it at every layer). With
    fewer scans (or ``workers``) than cores, the cores are split between the workers. On CUDA
    one worker feeds the GPU. Reading and writing get a quarter of the cores each, at least two,
    so the first scans are read and the last ones written side by side.
    """
    import torch

    cores = max(1, torch.get_num_threads())
    io = max(2, cores // 4)
    if getattr(device, "type", str(device)) == "cuda":
        return max(1, workers or 1), cores, io
    n = max(1, min(workers or cores, max(1, n_scans)))
    return n, max(1, cores // n), io


def file_in_folder(folder: Path, name: object) -> Path | None:
    """``folder / name`` when ``name`` (from a manifest: untrusted) is a plain name of an existing
    file (or DICOM series folder) directly in ``folder``; ``None`` for anything else (paths, links
    out, missing)."""
    if not isinstance(name, str) or "/" in name or "\\" in name:
        return None
    p = folder / name
    return p if p.resolve().parent == folder.resolve() and not p.is_symlink() and (p.is_file() or p.is_dir()) else None


def _size(p: Path) -> int:
    """Bytes of a file, or of a folder's files (a DICOM series output)."""
    return sum(f.stat().st_size for f in p.iterdir() if f.is_file()) if p.is_dir() else p.stat().st_size


def _remove(p: Path) -> None:
    if p.is_dir() and not p.is_symlink():
        shutil.rmtree(p, ignore_errors=True)
    else:
        p.unlink(missing_ok=True)


#: key of a scan's source-series headers between reading and committing (not in the sidecar)
_DICOM_SOURCE = "_dicom_source"


def _stale_outputs(record: dict | None, names: list[str], out: Path) -> list[Path]:
    """Files an earlier record of the same scan and task lists that the new outputs do not replace."""
    found = (file_in_folder(out, n) for n in (record or {}).get("outputs") or [] if n not in names)
    return [p for p in found if p is not None]


def select_jobs(task_name: str, key: str, jobs: list[ScanJob], out: Path, man: Manifest | None, rank: int,
                world: int) -> tuple[list[ScanJob], list[str], dict[str, dict]]:
    """This rank's share of ``jobs`` that still need doing, the labels of those already done
    (same task key, same input content, outputs intact), and the earlier records by stem.
    Temporaries a killed run left for the scans to do are removed."""
    share = [job for i, job in enumerate(jobs) if i % world == rank]
    done, previous = man.finished(share, task_name, key) if man else (set(), {})
    todo = [job for job in share if job.stem not in done]
    skipped = [job.label for job in share if job.stem in done]
    for job in todo:
        for pattern in (f".{job.stem}_{task_name}*.partial-*", f".{job.stem}_{task_name}*.old-*"):
            for stale in out.glob(pattern):
                _remove(stale)
    if skipped:
        logger.info("rank %d: %d scans already done, %d to do", rank, len(skipped), len(todo))
    return todo, skipped, previous


class ScanCommitter:
    """Puts a scan's results in place: outputs (atomic, synced, hashed as written), provenance
    sidecar, manifest record (last, after everything it names is on disk), removal of an
    earlier run's outputs this run does not make; or records the scan's failure. Thread-safe
    for different scans."""

    def __init__(self, out: Path, task: VolumeTask, key: str, provenance: dict, man: Manifest | None, rank: int,
                 previous: dict[str, dict], report: BatchReport,
                 on_result: Callable[[ScanJob, list[Path] | None, str | None], None] | None,
                 dicom: DicomOutput | None = None) -> None:
        self.out, self.task, self.key, self.provenance, self.man, self.rank = out, task, key, provenance, man, rank
        self.previous, self.report, self.on_result, self.dicom = previous, report, on_result, dicom

    def _record(self, job: ScanJob, **fields: Any) -> None:
        if self.man:
            self.man.append({"stem": job.stem, "task": self.task.name, "task_key": self.key, "input": str(job.source),
                             "series_uid": job.series_uid, **fields, "rank": self.rank, "time": time.time()})

    def fail(self, job: ScanJob, err: BaseException, timings: dict) -> None:
        msg = str(err) if str(job.source) in str(err) else f"{job.source}: {err}"
        if job.one_of_several and job.series_uid not in msg:
            msg += f" [series {job.series_uid}]"
        logger.error("failed: %s", msg)
        self.report.failed[job.label] = msg
        self._record(job, status="failed", error=msg, timings=timings)
        if self.on_result:
            self.on_result(job, None, msg)

    def commit(self, job: ScanJob, grid: Grid, source: dict, arrays: dict[str, tuple[np.ndarray, type]], timings: dict,
               t0: float, files: dict[str, bytes] | None = None) -> None:
        out, name = self.out, self.task.name
        written, sums = [], {}
        dicom_source = source.pop(_DICOM_SOURCE, None)
        if self.dicom is not None:
            for path in self.dicom.write(out, f"{job.stem}_{name}", arrays, grid.affine, dicom_source, source):
                written.append(path)
                sums[path.name] = sha256_of(path)  # small files, read back once
        for suffix in list(arrays):
            arr, dtype = arrays.pop(suffix)  # each full-size array is released once written
            digest = hashlib.sha256()  # of the bytes as written: no reading back
            path = write_nifti(out / f"{job.stem}_{name}{suffix}.nii.gz", arr, grid.affine, dtype=dtype, direct=True,
                               digest=digest)
            del arr
            written.append(path)
            sums[path.name] = digest.hexdigest()
        for suffix, data in (files or {}).items():  # small extra files (a QA figure)
            path = atomic_write_text(out / f"{job.stem}_{name}{suffix}", data)
            written.append(path)
            sums[path.name] = hashlib.sha256(data).hexdigest()
        timings["write_s"] = round(time.perf_counter() - t0, 3)
        sidecar = {
            **self.provenance, "medgan_version": medgan.__version__, "task": name, "task_key": self.key,
            "input": str(Path(job.source).resolve()), "series_uid": job.series_uid, **source,
            "input_shape": list(grid.shape), "input_affine": np.round(grid.affine, 6).tolist(),
            "outputs": sums, "timings": timings,
        }
        text = json.dumps(sidecar, indent=2)
        side = atomic_write_text(out / f"{job.stem}_{name}.json", text)
        sums[side.name] = hashlib.sha256(text.encode()).hexdigest()
        names = [p.name for p in written] + [side.name]
        sizes = {n: _size(out / n) for n in names}
        stale = _stale_outputs(self.previous.get(job.stem), names, out)
        self._record(job, status="done", error=None, outputs=names, sha256=sums, sizes=sizes,
                     input_sha256=source["input_sha256"], timings=timings)
        for p in stale:  # outputs of an earlier run of this scan that this run does not make (e.g. _seg)
            logger.info("%s: removed, an output of an earlier run with other options", p)
            _remove(p)
        self.report.written[job.label] = [str(p) for p in [*written, side]]
        if self.on_result:
            self.on_result(job, [*written, side], None)


class StagedExecutor:
    """Three thread pools overlapped: readers (``load``), model workers (``infer``, fed by the
    readers' futures) and writers (``write``). At most ``n_workers + prefetch`` scans are read or
    on the model and ``max_pending_writes`` wait for the writers, so memory is bounded; a
    scan's failure in any stage goes to ``fail`` and the others go on."""

    def __init__(self, n_workers: int, worker_threads: int, n_io: int, prefetch: int, max_pending_writes: int) -> None:
        import torch

        def threads(n: int) -> Callable[[], None]:
            return lambda: torch.set_num_threads(n)  # per thread: torch's OpenMP pool size is thread-local

        self.readers = ThreadPoolExecutor(n_io, thread_name_prefix="medgan-read", initializer=threads(1))
        self.models = ThreadPoolExecutor(n_workers, thread_name_prefix="medgan-model", initializer=threads(worker_threads))
        self.writers = ThreadPoolExecutor(n_io, thread_name_prefix="medgan-write", initializer=threads(1))
        self.depth, self.max_pending = n_workers + max(0, prefetch), max(1, max_pending_writes)

    def run(self, jobs: list[ScanJob], load: Callable, infer: Callable, write: Callable,
            fail: Callable[[ScanJob, BaseException, dict], None]) -> None:
        """``load(job, timings) -> loaded``; ``infer(loaded, timings) -> result``;
        ``write(job, result, timings)`` (handles its own failures)."""
        inflight: deque[tuple[ScanJob, dict, Future]] = deque()
        pending: deque[Future] = deque()

        def hand_over() -> None:  # the oldest scan's model result goes to the writers
            job, timings, fut = inflight.popleft()
            try:
                result = fut.result()
            except Exception as err:  # noqa: BLE001 - read, preprocessing or model failure of this scan only
                fail(job, err, timings)
                return
            while len(pending) >= self.max_pending:
                pending.popleft().result()
            pending.append(self.writers.submit(write, job, result, timings))

        # Python's cyclic GC would re-traverse the hundreds of thousands of objects of torch, MONAI
        # and the networks at each full collection (1 % of a CPU batch's time); frozen, they are
        # skipped. A caller that froze objects itself keeps its own setting.
        freeze = gc.get_freeze_count() == 0
        if freeze:
            gc.freeze()
        try:
            for job in jobs:
                while len(inflight) >= self.depth:
                    hand_over()
                timings: dict = {}
                loaded = self.readers.submit(load, job, timings)
                inflight.append((job, timings, self.models.submit(lambda f, t: infer(f.result(), t), loaded, timings)))
            while inflight:
                hand_over()
            for f in pending:
                f.result()
        finally:
            for pool in (self.readers, self.models, self.writers):
                pool.shutdown(wait=True, cancel_futures=True)
            if freeze:
                gc.unfreeze()


def run_batch(
    task: VolumeTask,
    jobs: list[ScanJob],
    output_dir: str | os.PathLike,
    *,
    prefetch: int = 2,
    workers: int | None = None,
    io_threads: int | None = None,
    max_pending_writes: int = 2,
    max_volumes: int = 2,
    max_voxels: int | None = MAX_VOXELS,
    rank: int | None = None,
    world_size: int | None = None,
    manifest: bool = True,
    tune_allocator: bool = True,
    on_result: Callable[[ScanJob, list[Path] | None, str | None], None] | None = None,
    dicom: DicomOutput | None = None,
) -> BatchReport:
    """Run ``task`` over ``jobs`` (this rank's share), writing into ``output_dir``: job selection
    (:func:`select_jobs`), the staged executor (:class:`StagedExecutor`) and committing each
    scan's outputs (:class:`ScanCommitter`).

    Args:
        task: what to do with each scan (see :class:`VolumeTask`).
        jobs: from :func:`plan_jobs`; under several ranks each takes every ``world_size``-th.
        output_dir: created if needed; outputs, sidecars and the manifest go here.
        prefetch: scans read and prepared ahead of the model workers.
        workers, io_threads: model workers and reader/writer threads (default:
            :func:`default_workers` for the task's device and the number of scans).
        max_pending_writes: model results waiting for the writers (small: canonical grid).
        max_volumes: full-resolution volumes being read or written at once (the memory bound).
        max_voxels: scans whose header gives more voxels fail without being read.
        rank, world_size: default from torchrun's environment.
        manifest: keep ``manifest*.jsonl`` and skip scans it records as done.
        tune_allocator: on CPU, let glibc keep freed activation pages for reuse
            (:func:`medgan.inference.reuse_freed_memory`): process-wide and lasting, which is why
            it is an option of the batch and not done when a model is loaded.
        on_result: ``on_result(job, written_or_None, error_or_None)`` after each scan.
        dicom: write the main output as a DICOM CT series (:class:`DicomOutput`); non-DICOM
            inputs then need ``dicom.study`` (refused before anything is read otherwise).

    Memory is bounded whatever the number of scans: at most ``max_volumes`` full-resolution
    volumes are being read or written at once, and ``prefetch + workers + max_pending_writes``
    scans wait on the canonical (training-spacing) grid.

    Raises:
        VolumeError: the output folder cannot be created or written (nothing can succeed).
    """
    import torch

    out = Path(output_dir)
    _check_writable(out)
    env_rank, env_world, _ = dist_env()
    rank = env_rank if rank is None else rank
    world = env_world if world_size is None else world_size
    device = getattr(task, "device", "cpu")
    if tune_allocator and getattr(device, "type", str(device)) == "cpu":
        reuse_freed_memory()
    if dicom is not None:
        dicom.check([j.source for j in jobs])
    # a NIfTI run's key stays as it was (no output-format key): earlier manifests still resume
    provenance = {**task.provenance(), **(dicom.provenance() if dicom is not None else {})}
    key = task_key(provenance)
    man = Manifest(out, rank, world) if manifest else None
    todo, skipped, previous = select_jobs(task.name, key, jobs, out, man, rank, world)
    report = BatchReport(skipped=skipped)
    commit = ScanCommitter(out, task, key, provenance, man, rank, previous, report, on_result, dicom)
    full_volumes = threading.Semaphore(max(1, max_volumes))

    def load(job: ScanJob, timings: dict) -> tuple[Grid, Any, dict]:
        """The scan's grid, the model's input, and what the sidecar says of the input."""
        with full_volumes:
            t0 = time.perf_counter()
            source = {"input_sha256": sha256_of(job.source)}  # of the content before it is read
            vol = read_volume(job.source, series_uid=job.series_uid, as_float=False, max_voxels=max_voxels,
                              check_values=getattr(task, "check_values", True))
            source["input_geometry"] = vol.notes
            if dicom is not None:  # the headers the DICOM output copies; fails before the model runs
                source[_DICOM_SOURCE] = dicom.read_source(job.source, job.series_uid)
            prepared = task.prepare(vol)
            timings["read_s"] = round(time.perf_counter() - t0, 3)
            return vol.grid, prepared, source  # the voxels are not kept: memory stays bounded

    def infer(loaded: tuple[Grid, Any, dict], timings: dict) -> tuple[Grid, Any, dict, Any]:
        grid, prepared, source = loaded
        t0 = time.perf_counter()
        with torch.inference_mode():
            result = task.run(prepared)
        timings["model_s"] = round(time.perf_counter() - t0, 3)
        return grid, prepared, source, result

    def write(job: ScanJob, inferred: tuple[Grid, Any, dict, Any], timings: dict) -> None:
        grid, prepared, source, result = inferred
        del inferred
        try:
            with full_volumes:
                t0 = time.perf_counter()
                files: dict[str, bytes] = {}
                if hasattr(task, "report"):
                    fields, files = task.report(prepared, result)
                    source.update(fields)
                arrays = task.finish(grid, prepared, result)
                del prepared, result
                commit.commit(job, grid, source, arrays, timings, t0, files)
        except Exception as err:  # noqa: BLE001 - one scan's failure must not stop the batch
            commit.fail(job, err, timings)

    n_workers, worker_threads, n_io = default_workers(device, len(todo), workers)
    StagedExecutor(n_workers, worker_threads, io_threads or n_io, prefetch, max_pending_writes).run(
        todo, load, infer, write, commit.fail)
    return report
