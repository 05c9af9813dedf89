-- Initial schema: the PostgreSQL twin of ../0001_initial.sql, translated mechanically.
--
-- INTEGER there is BIGINT here (Discord snowflakes need 64 bits), REAL is DOUBLE PRECISION (unix
-- seconds, USD), dict-valued columns stay JSON text (so both backends read and write them the
-- same way, and copying a database moves them byte for byte), and AUTOINCREMENT is GENERATED
-- ALWAYS AS IDENTITY: a sequence never hands out an id twice, so turn and job ids in button
-- custom ids are never reused after a delete.

CREATE TABLE conversations (
    channel_id BIGINT NOT NULL PRIMARY KEY,
    guild_id BIGINT,
    owner_id BIGINT NOT NULL,
    parent_channel_id BIGINT,
    latest_response_id TEXT,
    latest_message_id BIGINT,
    engine TEXT NOT NULL,
    options TEXT NOT NULL,
    created_at DOUBLE PRECISION NOT NULL,
    updated_at DOUBLE PRECISION NOT NULL
);

CREATE INDEX conversations_owner ON conversations (owner_id);

CREATE TABLE turns (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    channel_id BIGINT NOT NULL,
    guild_id BIGINT,
    user_id BIGINT NOT NULL,
    message_id BIGINT,
    response_id TEXT,
    parent_response_id TEXT,
    prompt TEXT NOT NULL,
    revised_prompt TEXT,
    options TEXT NOT NULL,
    engine TEXT NOT NULL,
    model TEXT NOT NULL,
    usage TEXT NOT NULL,
    cost_usd DOUBLE PRECISION NOT NULL,
    status TEXT NOT NULL,
    image_url TEXT,
    created_at DOUBLE PRECISION NOT NULL
);

CREATE INDEX turns_message ON turns (message_id);
CREATE INDEX turns_response ON turns (response_id);
CREATE INDEX turns_channel ON turns (channel_id, id);
CREATE INDEX turns_user ON turns (user_id);

-- queued_at is when the job last entered the queue (enqueue or retry); the queue is FIFO on it.
CREATE TABLE jobs (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    kind TEXT NOT NULL,
    status TEXT NOT NULL
        CONSTRAINT jobs_status_check
        CHECK (status IN ('queued', 'running', 'done', 'failed', 'interrupted', 'cancelled')),
    guild_id BIGINT,
    channel_id BIGINT NOT NULL,
    user_id BIGINT NOT NULL,
    payload TEXT NOT NULL,
    locale TEXT NOT NULL,
    progress_message_id BIGINT,
    attempts BIGINT NOT NULL DEFAULT 0,
    error TEXT,
    created_at DOUBLE PRECISION NOT NULL,
    queued_at DOUBLE PRECISION NOT NULL,
    started_at DOUBLE PRECISION,
    finished_at DOUBLE PRECISION
);

CREATE INDEX jobs_status ON jobs (status, queued_at, id);
CREATE INDEX jobs_user_status ON jobs (user_id, status);

CREATE TABLE uploaded_files (
    sha256 TEXT NOT NULL PRIMARY KEY,
    file_id TEXT NOT NULL,
    size_bytes BIGINT NOT NULL,
    created_at DOUBLE PRECISION NOT NULL
);

-- day is the UTC date of `at` ('YYYY-MM-DD'), stored so per-day sums group the same way on
-- every backend instead of relying on each one's date functions.
CREATE TABLE usage_ledger (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at DOUBLE PRECISION NOT NULL,
    day TEXT NOT NULL,
    guild_id BIGINT,
    user_id BIGINT NOT NULL,
    channel_id BIGINT,
    response_id TEXT,
    model TEXT NOT NULL,
    engine TEXT NOT NULL,
    images BIGINT NOT NULL,
    input_tokens BIGINT NOT NULL,
    output_tokens BIGINT NOT NULL,
    image_input_tokens BIGINT NOT NULL,
    image_output_tokens BIGINT NOT NULL,
    cost_usd DOUBLE PRECISION NOT NULL
);

CREATE INDEX usage_guild_at ON usage_ledger (guild_id, at);
CREATE INDEX usage_user_at ON usage_ledger (user_id, at);
CREATE INDEX usage_at ON usage_ledger (at);

CREATE TABLE user_settings (
    user_id BIGINT NOT NULL PRIMARY KEY,
    settings TEXT NOT NULL,
    updated_at DOUBLE PRECISION NOT NULL
);

CREATE TABLE guild_config (
    guild_id BIGINT NOT NULL PRIMARY KEY,
    config TEXT NOT NULL,
    updated_at DOUBLE PRECISION NOT NULL
);
