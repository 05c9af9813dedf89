-- The job ledger: the PostgreSQL twin of ../0002_job_ledger.sql. A job reserves its estimated
-- cost while it is queued or running, and a finished image is saved with its turn and usage
-- before it is posted ('saved'), so a restart posts it instead of generating it again.
--
-- PostgreSQL changes a CHECK constraint and adds columns in place (SQLite has to rebuild the
-- table); the ids and their sequence are untouched.

ALTER TABLE jobs DROP CONSTRAINT jobs_status_check;

ALTER TABLE jobs ADD CONSTRAINT jobs_status_check
    CHECK (status IN ('queued', 'running', 'saved', 'done', 'failed', 'interrupted',
                      'cancelled'));

ALTER TABLE jobs ADD COLUMN reserved_usd DOUBLE PRECISION NOT NULL DEFAULT 0;
ALTER TABLE jobs ADD COLUMN reserved_images BIGINT NOT NULL DEFAULT 0;
ALTER TABLE jobs ADD COLUMN response_id TEXT;
ALTER TABLE jobs ADD COLUMN turn_id BIGINT;

CREATE INDEX jobs_guild_status ON jobs (guild_id, status);

-- The bytes of every final image, saved in the same transaction as its turn: posting (and
-- posting again after a restart) and the image engine's next turn read them from here.
CREATE TABLE turn_images (
    turn_id BIGINT NOT NULL PRIMARY KEY,
    format TEXT NOT NULL,
    data BYTEA NOT NULL
);

-- What the finished image looked like when it arrived (actual size and quality, seconds, the
-- model's words, notes), so a saved image is posted after a restart exactly as it would have been.
ALTER TABLE turns ADD COLUMN result TEXT NOT NULL DEFAULT '{}';

-- Images are compressed already: store them out of line without TOAST's compression attempt.
ALTER TABLE turn_images ALTER COLUMN data SET STORAGE EXTERNAL;
