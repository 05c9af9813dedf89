-- The job ledger: a job reserves its estimated cost while it is queued or running, and a
-- finished image is saved with its turn and usage before it is posted ('saved'), so a restart
-- posts it instead of generating it again.
--
-- SQLite cannot change a CHECK constraint in place: the jobs table is rebuilt with the same ids
-- (AUTOINCREMENT's sequence follows the rename, so ids are still never reused).

CREATE TABLE jobs_ledger (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    kind TEXT NOT NULL,
    status TEXT NOT NULL
        CHECK (status IN ('queued', 'running', 'saved', 'done', 'failed', 'interrupted',
                          'cancelled')),
    guild_id INTEGER,
    channel_id INTEGER NOT NULL,
    user_id INTEGER NOT NULL,
    payload TEXT NOT NULL,
    locale TEXT NOT NULL,
    progress_message_id INTEGER,
    attempts INTEGER NOT NULL DEFAULT 0,
    error TEXT,
    created_at REAL NOT NULL,
    queued_at REAL NOT NULL,
    started_at REAL,
    finished_at REAL,
    reserved_usd REAL NOT NULL DEFAULT 0,
    reserved_images INTEGER NOT NULL DEFAULT 0,
    response_id TEXT,
    turn_id INTEGER
);

INSERT INTO jobs_ledger (id, kind, status, guild_id, channel_id, user_id, payload, locale,
    progress_message_id, attempts, error, created_at, queued_at, started_at, finished_at)
SELECT id, kind, status, guild_id, channel_id, user_id, payload, locale, progress_message_id,
    attempts, error, created_at, queued_at, started_at, finished_at FROM jobs;

DROP TABLE jobs;

ALTER TABLE jobs_ledger RENAME TO jobs;

CREATE INDEX jobs_status ON jobs (status, queued_at, id);
CREATE INDEX jobs_user_status ON jobs (user_id, status);
CREATE INDEX jobs_guild_status ON jobs (guild_id, status);

-- The bytes of every final image, saved in the same transaction as its turn: posting (and
-- posting again after a restart) and the image engine's next turn read them from here.
CREATE TABLE turn_images (
    turn_id INTEGER NOT NULL PRIMARY KEY,
    format TEXT NOT NULL,
    data BLOB NOT NULL
);

-- What the finished image looked like when it arrived (actual size and quality, seconds, the
-- model's words, notes), so a saved image is posted after a restart exactly as it would have been.
ALTER TABLE turns ADD COLUMN result TEXT NOT NULL DEFAULT '{}';
