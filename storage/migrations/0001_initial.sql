-- Initial schema.
--
-- Kept close to standard SQL so a PostgreSQL twin is a mechanical translation: INTEGER here is
-- SQLite's 64-bit integer (BIGINT there, which Discord snowflakes need), REAL holds unix seconds
-- (DOUBLE PRECISION there), dict-valued columns are JSON text, and AUTOINCREMENT becomes
-- GENERATED ALWAYS AS IDENTITY. Turn and job ids appear in persistent button custom ids, so they
-- must never be reused after a delete; that is what AUTOINCREMENT guarantees.

CREATE TABLE conversations (
    channel_id INTEGER NOT NULL PRIMARY KEY,
    guild_id INTEGER,
    owner_id INTEGER NOT NULL,
    parent_channel_id INTEGER,
    latest_response_id TEXT,
    latest_message_id INTEGER,
    engine TEXT NOT NULL,
    options TEXT NOT NULL,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL
);

CREATE INDEX conversations_owner ON conversations (owner_id);

CREATE TABLE turns (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    channel_id INTEGER NOT NULL,
    guild_id INTEGER,
    user_id INTEGER NOT NULL,
    message_id INTEGER,
    response_id TEXT,
    parent_response_id TEXT,
    prompt TEXT NOT NULL,
    revised_prompt TEXT,
    options TEXT NOT NULL,
    engine TEXT NOT NULL,
    model TEXT NOT NULL,
    usage TEXT NOT NULL,
    cost_usd REAL NOT NULL,
    status TEXT NOT NULL,
    image_url TEXT,
    created_at REAL NOT NULL
);

CREATE INDEX turns_message ON turns (message_id);
CREATE INDEX turns_response ON turns (response_id);
CREATE INDEX turns_channel ON turns (channel_id, id);
CREATE INDEX turns_user ON turns (user_id);

-- queued_at is when the job last entered the queue (enqueue or retry); the queue is FIFO on it.
CREATE TABLE jobs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    kind TEXT NOT NULL,
    status TEXT NOT NULL
        CHECK (status IN ('queued', 'running', 'done', 'failed', 'interrupted', 'cancelled')),
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
    finished_at REAL
);

CREATE INDEX jobs_status ON jobs (status, queued_at, id);
CREATE INDEX jobs_user_status ON jobs (user_id, status);

CREATE TABLE uploaded_files (
    sha256 TEXT NOT NULL PRIMARY KEY,
    file_id TEXT NOT NULL,
    size_bytes INTEGER NOT NULL,
    created_at REAL NOT NULL
);

-- day is the UTC date of `at` ('YYYY-MM-DD'), stored so per-day sums group the same way on
-- every backend instead of relying on each one's date functions.
CREATE TABLE usage_ledger (
    id INTEGER PRIMARY KEY,
    at REAL NOT NULL,
    day TEXT NOT NULL,
    guild_id INTEGER,
    user_id INTEGER NOT NULL,
    channel_id INTEGER,
    response_id TEXT,
    model TEXT NOT NULL,
    engine TEXT NOT NULL,
    images INTEGER NOT NULL,
    input_tokens INTEGER NOT NULL,
    output_tokens INTEGER NOT NULL,
    image_input_tokens INTEGER NOT NULL,
    image_output_tokens INTEGER NOT NULL,
    cost_usd REAL NOT NULL
);

CREATE INDEX usage_guild_at ON usage_ledger (guild_id, at);
CREATE INDEX usage_user_at ON usage_ledger (user_id, at);
CREATE INDEX usage_at ON usage_ledger (at);

CREATE TABLE user_settings (
    user_id INTEGER NOT NULL PRIMARY KEY,
    settings TEXT NOT NULL,
    updated_at REAL NOT NULL
);

CREATE TABLE guild_config (
    guild_id INTEGER NOT NULL PRIMARY KEY,
    config TEXT NOT NULL,
    updated_at REAL NOT NULL
);
