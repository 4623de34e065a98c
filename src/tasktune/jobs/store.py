"""The fine-tuning state in SQLite: files, jobs, events, checkpoints, and the tenant that owns each file and job.

WAL mode with synchronous=FULL: a committed row survives a SIGKILL of any process (and a power cut), readers never
block the writer, and the server and the training process write the same database safely. Each thread gets its own
connection (sqlite3 connections must not be shared across threads).
"""

from __future__ import annotations

import json
import secrets
import sqlite3
import threading
import time
from pathlib import Path

SCHEMA = """
CREATE TABLE IF NOT EXISTS files (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT UNIQUE NOT NULL,
    tenant TEXT NOT NULL,
    filename TEXT NOT NULL,
    purpose TEXT NOT NULL,
    bytes INTEGER NOT NULL,
    created_at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS jobs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT UNIQUE NOT NULL,
    tenant TEXT NOT NULL,
    model TEXT NOT NULL,
    base TEXT NOT NULL,
    training_file TEXT NOT NULL,
    validation_file TEXT,
    suffix TEXT,
    seed INTEGER NOT NULL,
    metadata TEXT,
    hyperparameters TEXT NOT NULL,
    status TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    finished_at INTEGER,
    fine_tuned_model TEXT,
    trained_tokens INTEGER,
    result_files TEXT NOT NULL DEFAULT '[]',
    error TEXT,
    trained INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT UNIQUE NOT NULL,
    job_id TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    level TEXT NOT NULL,
    message TEXT NOT NULL,
    type TEXT NOT NULL,
    data TEXT
);
CREATE INDEX IF NOT EXISTS events_by_job ON events (job_id, seq);
CREATE TABLE IF NOT EXISTS checkpoints (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT UNIQUE NOT NULL,
    job_id TEXT NOT NULL,
    step INTEGER NOT NULL,
    created_at INTEGER NOT NULL,
    metrics TEXT NOT NULL,
    UNIQUE (job_id, step)
);
"""

# Statuses in OpenAI's order; a job moves forward only.
ACTIVE = ("validating_files", "queued", "running")
FINAL = ("succeeded", "failed", "cancelled")
JSON_COLUMNS = {"metadata", "hyperparameters", "result_files", "error", "data", "metrics"}


def new_id(prefix: str) -> str:
    """OpenAI-style ids (`file-…`, `ftjob-…`): random, so one tenant cannot guess another's."""
    return f"{prefix}-{secrets.token_hex(12)}"


def now() -> int:
    return int(time.time())


class Store:
    """The state folder's database. Rows come back as dicts, with JSON columns decoded."""

    def __init__(self, state: str | Path):
        self.state = Path(state)
        self.path = self.state / "state.db"
        self._local = threading.local()
        self.state.mkdir(parents=True, exist_ok=True)
        db = self.db
        db.execute("PRAGMA journal_mode=WAL")
        db.executescript(SCHEMA)

    @property
    def db(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            # autocommit (isolation_level=None): each statement commits; multi-statement changes use `transaction`
            conn = sqlite3.connect(self.path, timeout=30, isolation_level=None)
            conn.row_factory = sqlite3.Row
            conn.execute("PRAGMA synchronous=FULL")
            conn.execute("PRAGMA busy_timeout=30000")
            self._local.conn = conn
        return conn

    def _rows(self, sql: str, params=()) -> list[dict]:
        return [_decode(r) for r in self.db.execute(sql, params).fetchall()]

    def _one(self, sql: str, params=()) -> dict | None:
        rows = self._rows(sql, params)
        return rows[0] if rows else None

    def _insert(self, table: str, row: dict) -> None:
        cols = ", ".join(row)
        marks = ", ".join("?" for _ in row)
        self.db.execute(f"INSERT INTO {table} ({cols}) VALUES ({marks})", [_encode(k, v) for k, v in row.items()])

    # --- files ----------------------------------------------------------------------------------------------------
    def file_path(self, file_id: str) -> Path:
        """Where a file's bytes live: named by the generated id alone, never by anything a client sent."""
        assert file_id.startswith("file-") and file_id[5:].isalnum(), file_id
        return self.state / "files" / file_id

    def add_file(self, file_id: str, tenant: str, filename: str, purpose: str, size: int) -> dict:
        row = dict(id=file_id, tenant=tenant, filename=filename, purpose=purpose, bytes=size, created_at=now())
        self._insert("files", row)
        return self.file(file_id, tenant)

    def file(self, file_id: str, tenant: str | None) -> dict | None:
        """The file if it exists and `tenant` owns it (None: any tenant, for the server's own use)."""
        row = self._one("SELECT * FROM files WHERE id = ?", (file_id,))
        return row if row and (tenant is None or row["tenant"] == tenant) else None

    def delete_file(self, file_id: str) -> None:
        self.db.execute("DELETE FROM files WHERE id = ?", (file_id,))

    # --- jobs -----------------------------------------------------------------------------------------------------
    def job_dir(self, job_id: str) -> Path:
        """A job's folder (its converted data, run folder and log), named by the generated id alone."""
        assert job_id.startswith("ftjob-") and job_id[6:].isalnum(), job_id
        return self.state / "jobs" / job_id

    def add_job(self, row: dict) -> dict:
        self._insert("jobs", row)
        return self.job(row["id"], None)

    def job(self, job_id: str, tenant: str | None) -> dict | None:
        row = self._one("SELECT * FROM jobs WHERE id = ?", (job_id,))
        return row if row and (tenant is None or row["tenant"] == tenant) else None

    def jobs_with(self, status: str) -> list[dict]:
        """Jobs in `status`, oldest first (the order they run in)."""
        return self._rows("SELECT * FROM jobs WHERE status = ? ORDER BY seq", (status,))

    def update_job(self, job_id: str, *, only_if: tuple[str, ...] | None = None, **values) -> bool:
        """Set columns of a job; with `only_if`, only while its status is one of those (a cancel and a finishing
        worker cannot overwrite each other). True if the row changed."""
        sets = ", ".join(f"{k} = ?" for k in values)
        params = [_encode(k, v) for k, v in values.items()] + [job_id]
        where = "id = ?"
        if only_if:
            where += f" AND status IN ({', '.join('?' for _ in only_if)})"
            params += list(only_if)
        return self.db.execute(f"UPDATE jobs SET {sets} WHERE {where}", params).rowcount > 0

    def file_in_use(self, file_id: str) -> str | None:
        """A job still being validated from this file (its bytes are read then), or None."""
        row = self._one(
            "SELECT id FROM jobs WHERE status = 'validating_files' AND (training_file = ? OR validation_file = ?)",
            (file_id, file_id),
        )
        return row["id"] if row else None

    # --- events and checkpoints -----------------------------------------------------------------------------------
    def add_event(self, job_id: str, message: str, *, level: str = "info", type_: str = "message", data=None) -> None:
        row = dict(id=new_id("ftevent"), job_id=job_id, created_at=now(), level=level, message=message, type=type_,
                   data=data)  # fmt: skip
        self._insert("events", row)

    def last_metrics_step(self, job_id: str) -> int:
        """The newest step already reported as a metrics event (a resumed job does not report a step twice)."""
        row = self.db.execute(
            "SELECT MAX(CAST(json_extract(data, '$.step') AS INTEGER)) FROM events"
            " WHERE job_id = ? AND type = 'metrics'",
            (job_id,),
        ).fetchone()
        return row[0] or 0

    def add_checkpoint(self, job_id: str, step: int, metrics: dict) -> None:
        self.db.execute(
            "INSERT OR IGNORE INTO checkpoints (id, job_id, step, created_at, metrics) VALUES (?, ?, ?, ?, ?)",
            (new_id("ftckpt"), job_id, step, now(), json.dumps(metrics)),
        )

    # --- lists ----------------------------------------------------------------------------------------------------
    def page(self, table: str, where: dict, after: str | None, limit: int, newest_first: bool) -> tuple[list, bool]:
        """One page of a list, as OpenAI pages them: the rows after the row with id `after` in the list's order,
        at most `limit`, and whether more follow. `where`: column = value filters (table and columns are ours)."""
        clauses = [f"{k} = ?" for k in where]
        params = list(where.values())
        if after is not None:
            # an `after` that is not in this (filtered) list yields an empty page, as it names nothing here
            clauses.append(f"seq {'<' if newest_first else '>'} COALESCE((SELECT seq FROM {table} WHERE id = ?"
                           + "".join(f" AND {k} = ?" for k in where) + "), ?)")  # fmt: skip
            params += [after, *where.values(), -1 if newest_first else 2**62]
        sql = f"SELECT * FROM {table}"
        if clauses:
            sql += " WHERE " + " AND ".join(clauses)
        sql += f" ORDER BY seq {'DESC' if newest_first else 'ASC'} LIMIT ?"
        rows = self._rows(sql, [*params, limit + 1])
        return rows[:limit], len(rows) > limit


def _encode(key: str, value):
    return json.dumps(value) if key in JSON_COLUMNS and value is not None else value


def _decode(row: sqlite3.Row) -> dict:
    out = dict(row)
    for k in JSON_COLUMNS & out.keys():
        if out[k] is not None:
            out[k] = json.loads(out[k])
    return out
