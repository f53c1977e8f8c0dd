"""The durable job store of `lumina-rt serve`: one SQLite database (WAL) and one folder of outputs.

A job is written (committed) before the client hears "accepted", so a restart — `kill -9` included — loses no
accepted job: `recover()` puts the jobs that were in progress back in the queue with their attempt count (failed
once they reach `max_attempts`). Output files are written under hidden temporary names and renamed into place
(`lumina_rt.files.atomic_path`); `recover()` removes the temporaries a crash left, so no partial file is ever served.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

STATUSES = ("queued", "in_progress", "completed", "failed")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    status TEXT NOT NULL,
    progress INTEGER NOT NULL DEFAULT 0,
    model TEXT NOT NULL,
    prompt TEXT NOT NULL,
    seconds TEXT NOT NULL,
    size TEXT NOT NULL,
    params TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    started_at REAL,
    completed_at INTEGER,
    expires_at INTEGER,
    attempts INTEGER NOT NULL DEFAULT 0,
    error_code TEXT,
    error_message TEXT,
    result TEXT,
    idempotency_key TEXT UNIQUE,
    deleted INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS jobs_status ON jobs(status, deleted, seq);
"""


@dataclass
class Job:
    """One row of the store (see `_SCHEMA`); `params` are the checked generation fields, `result` what the run
    reported (evaluations, backend, timings)."""

    seq: int
    id: str
    status: str
    progress: int
    model: str
    prompt: str
    seconds: str
    size: str
    params: dict[str, Any]
    created_at: int
    started_at: float | None
    completed_at: int | None
    expires_at: int | None
    attempts: int
    error_code: str | None
    error_message: str | None
    result: dict[str, Any] | None
    idempotency_key: str | None
    deleted: bool

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> Job:
        d = dict(row)
        d["params"] = json.loads(d["params"])
        d["result"] = json.loads(d["result"]) if d["result"] else None
        d["deleted"] = bool(d["deleted"])
        return cls(**d)


class JobStore:
    """Jobs in `<folder>/jobs.sqlite3` (WAL), outputs in `<folder>/outputs/<id>/`. Thread-safe (one connection
    behind a lock: every statement is short)."""

    def __init__(self, folder: str | os.PathLike[str], max_attempts: int = 3):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.outputs = self.folder / "outputs"
        self.outputs.mkdir(exist_ok=True)
        self.max_attempts = int(max_attempts)
        self._lock = threading.RLock()
        self._db = sqlite3.connect(self.folder / "jobs.sqlite3", check_same_thread=False, isolation_level=None)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")  # a job the client heard "accepted" for survives power loss
        self._db.execute("PRAGMA busy_timeout=5000")
        self._db.executescript(_SCHEMA)
        self._progress: dict[str, int] = {}  # of running jobs: in memory (a restart runs them from 0 again)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def _job(self, row: sqlite3.Row) -> Job:
        job = Job.from_row(row)
        if job.status == "in_progress":
            job.progress = self._progress.get(job.id, job.progress)
        return job

    def _one(self, sql: str, args: tuple[Any, ...] = ()) -> Job | None:
        with self._lock:
            row = self._db.execute(sql, args).fetchone()
            return None if row is None else self._job(row)

    # ------------------------------------------------------------------ submission
    def add(
        self,
        *,
        model: str,
        prompt: str,
        seconds: str,
        size: str,
        params: dict[str, Any],
        idempotency_key: str | None = None,
        max_queue: int | None = None,
    ) -> tuple[Job, bool]:
        """Insert a queued job (committed on return) -> (job, created). With an `idempotency_key` already used, the
        job it made and False. With `max_queue`, QueueFull when that many jobs are already queued."""
        with self._tx() as db:
            if idempotency_key is not None:
                row = db.execute("SELECT * FROM jobs WHERE idempotency_key = ?", (idempotency_key,)).fetchone()
                if row is not None:
                    return Job.from_row(row), False
            if max_queue is not None:
                queued = db.execute("SELECT COUNT(*) FROM jobs WHERE status = 'queued' AND deleted = 0").fetchone()[0]
                if queued >= max_queue:
                    raise QueueFull(queued)
            job_id = "video_" + secrets.token_hex(12)
            db.execute(
                "INSERT INTO jobs (id, status, model, prompt, seconds, size, params, created_at, idempotency_key) "
                "VALUES (?, 'queued', ?, ?, ?, ?, ?, ?, ?)",
                (job_id, model, prompt, seconds, size, json.dumps(params), int(time.time()), idempotency_key),
            )
            row = db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return Job.from_row(row), True

    # ------------------------------------------------------------------ reading
    def get(self, job_id: str) -> Job | None:
        """The job, or None when unknown or deleted."""
        return self._one("SELECT * FROM jobs WHERE id = ? AND deleted = 0", (job_id,))

    def list(self, after: str | None = None, limit: int = 20, order: str = "desc") -> tuple[list[Job], bool]:
        """Jobs in submission order (`order` asc or desc) after the job `after` -> (page, has_more)."""
        op, direction = (">", "ASC") if order == "asc" else ("<", "DESC")
        where, args = "deleted = 0", []
        if after is not None:
            where += f" AND seq {op} COALESCE((SELECT seq FROM jobs WHERE id = ?), ?)"
            args += [after, -1 if order == "asc" else 2**62]
        with self._lock:
            rows = self._db.execute(
                f"SELECT * FROM jobs WHERE {where} ORDER BY seq {direction} LIMIT ?", (*args, limit + 1)
            ).fetchall()
            jobs = [self._job(r) for r in rows]
        return jobs[:limit], len(jobs) > limit

    def queued(self, limit: int = 64) -> list[Job]:
        """The queued jobs, oldest first."""
        with self._lock:
            rows = self._db.execute(
                "SELECT * FROM jobs WHERE status = 'queued' AND deleted = 0 ORDER BY seq LIMIT ?", (limit,)
            ).fetchall()
        return [Job.from_row(r) for r in rows]

    def queue_position(self, job: Job) -> int:
        """How many queued jobs run before this one (0: next)."""
        with self._lock:
            return self._db.execute(
                "SELECT COUNT(*) FROM jobs WHERE status = 'queued' AND deleted = 0 AND seq < ?", (job.seq,)
            ).fetchone()[0]

    def counts(self) -> dict[str, int]:
        """Jobs by status (deleted ones not counted)."""
        with self._lock:
            rows = self._db.execute("SELECT status, COUNT(*) FROM jobs WHERE deleted = 0 GROUP BY status").fetchall()
        out: dict[str, int] = dict.fromkeys(STATUSES, 0)
        out.update({r[0]: r[1] for r in rows})
        return out

    # ------------------------------------------------------------------ the worker's writes
    def start(self, job_ids: list[str]) -> list[Job]:
        """Mark queued jobs in progress (one more attempt each); returns those that were still queued."""
        now = time.time()
        with self._tx() as db:
            marks = ",".join("?" * len(job_ids))
            db.execute(
                f"UPDATE jobs SET status = 'in_progress', progress = 0, attempts = attempts + 1, started_at = ? "
                f"WHERE id IN ({marks}) AND status = 'queued' AND deleted = 0",
                (now, *job_ids),
            )
            rows = db.execute(
                f"SELECT * FROM jobs WHERE id IN ({marks}) AND status = 'in_progress' AND started_at = ? ORDER BY seq",
                (*job_ids, now),
            ).fetchall()
        return [Job.from_row(r) for r in rows]

    def set_progress(self, job_id: str, progress: int) -> None:
        """A running job's progress (kept in memory: no disk write per sampler step)."""
        with self._lock:
            self._progress[job_id] = int(progress)

    def _done(self, job_id: str) -> None:
        """Forget a running job's in-memory progress; called under the lock *after* the row's status changed, so a
        reader never sees the job still in progress with the stored progress (0) instead of the live one."""
        self._progress.pop(job_id, None)

    def requeue(self, job_id: str) -> None:
        """Back to the queue without counting the attempt (a batch split to run item by item)."""
        with self._lock:
            self._db.execute(
                "UPDATE jobs SET status = 'queued', progress = 0, attempts = MAX(attempts - 1, 0) "
                "WHERE id = ? AND status = 'in_progress'",
                (job_id,),
            )
            self._done(job_id)

    def retry(self, job_id: str, code: str, message: str, ttl_seconds: float | None = None) -> bool:
        """A running job whose process died: back to the queue with its attempt counted (True), or failed with
        `code` and the message once it has had `max_attempts` attempts (False)."""
        job = self._one("SELECT * FROM jobs WHERE id = ? AND status = 'in_progress'", (job_id,))
        if job is None:
            return False
        if job.attempts >= self.max_attempts:
            self.fail(job_id, code, f"{message} (during each of {job.attempts} attempts)", ttl_seconds)
            return False
        with self._lock:
            self._db.execute(
                "UPDATE jobs SET status = 'queued', progress = 0 WHERE id = ? AND status = 'in_progress'", (job_id,)
            )
            self._done(job_id)
        return True

    def complete(self, job_id: str, result: dict[str, Any], ttl_seconds: float | None) -> None:
        now = int(time.time())
        expires = None if ttl_seconds is None else now + int(ttl_seconds)
        with self._lock:
            self._db.execute(
                "UPDATE jobs SET status = 'completed', progress = 100, completed_at = ?, expires_at = ?, result = ? "
                "WHERE id = ?",
                (now, expires, json.dumps(result), job_id),
            )
            self._done(job_id)

    def fail(self, job_id: str, code: str, message: str, ttl_seconds: float | None = None) -> None:
        now = int(time.time())
        expires = None if ttl_seconds is None else now + int(ttl_seconds)
        with self._lock:
            self._db.execute(
                "UPDATE jobs SET status = 'failed', completed_at = ?, expires_at = ?, error_code = ?, "
                "error_message = ? WHERE id = ?",
                (now, expires, code, message, job_id),
            )
            self._done(job_id)

    def delete(self, job_id: str) -> Job | None:
        """Mark the job deleted (it never runs, or its run is dropped) and remove its outputs; None if unknown."""
        with self._tx() as db:
            row = db.execute("SELECT * FROM jobs WHERE id = ? AND deleted = 0", (job_id,)).fetchone()
            if row is None:
                return None
            db.execute("UPDATE jobs SET deleted = 1 WHERE id = ?", (job_id,))
            self._done(job_id)
        shutil.rmtree(self.output_dir(job_id), ignore_errors=True)
        return Job.from_row(row)

    def expired(self, now: float | None = None) -> list[str]:
        """Ids of finished jobs whose `expires_at` has passed."""
        with self._lock:
            rows = self._db.execute(
                "SELECT id FROM jobs WHERE deleted = 0 AND expires_at IS NOT NULL AND expires_at <= ?",
                (int(now if now is not None else time.time()),),
            ).fetchall()
        return [r[0] for r in rows]

    # ------------------------------------------------------------------ restart
    def recover(self) -> dict[str, int]:
        """After a restart: jobs left in progress go back to the queue (or fail after `max_attempts` attempts);
        temporary files of interrupted writes and the outputs of unfinished jobs are removed."""
        with self._tx() as db:
            failed = db.execute(
                "UPDATE jobs SET status = 'failed', completed_at = ?, error_code = 'interrupted', "
                "error_message = 'the server stopped during each of ' || attempts || ' attempts of this job' "
                "WHERE status = 'in_progress' AND deleted = 0 AND attempts >= ?",
                (int(time.time()), self.max_attempts),
            ).rowcount
            requeued = db.execute(
                "UPDATE jobs SET status = 'queued', progress = 0 WHERE status = 'in_progress' AND deleted = 0"
            ).rowcount
            done = {r[0] for r in db.execute("SELECT id FROM jobs WHERE status = 'completed' AND deleted = 0")}
        removed = 0
        for entry in self.outputs.iterdir():
            if entry.name not in done:
                shutil.rmtree(entry, ignore_errors=True) if entry.is_dir() else entry.unlink(missing_ok=True)
                removed += 1
            elif entry.is_dir():
                for tmp in entry.glob(".*.tmp*"):
                    tmp.unlink(missing_ok=True)
                    removed += 1
        return {"requeued": requeued, "failed": failed, "removed": removed}

    def output_dir(self, job_id: str) -> Path:
        return self.outputs / job_id


class QueueFull(Exception):
    """The queue holds `queued` jobs, its bound."""

    def __init__(self, queued: int):
        super().__init__(f"the queue is full ({queued} jobs queued)")
        self.queued = queued
