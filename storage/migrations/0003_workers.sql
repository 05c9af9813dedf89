-- Several bot processes can share one database: each registers as a worker and says it is alive
-- (seen_at) every few seconds. A job records the worker whose queue holds it or that runs it, so
-- a process settles only the jobs of workers it has not heard from for a while, never the live
-- jobs of another process.

CREATE TABLE workers (
    id TEXT NOT NULL PRIMARY KEY,
    started_at REAL NOT NULL,
    seen_at REAL NOT NULL
);

ALTER TABLE jobs ADD COLUMN worker_id TEXT;

CREATE INDEX jobs_worker_status ON jobs (worker_id, status);
