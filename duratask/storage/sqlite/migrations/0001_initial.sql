-- duratask SQLite schema, version 1.
--
-- Every table carries the task hub, so many hubs can share one file.
-- Times are INTEGER microseconds since the Unix epoch (UTC).
-- A lease is (lease_token, lease_expires); lease_expires = 0 (or any past time) means "not leased",
-- which keeps every "is it free?" test a plain range comparison the indexes can serve.

-- The current execution of each orchestration instance, and its orchestration lease.
CREATE TABLE instances (
    taskhub            TEXT    NOT NULL,
    instance_id        TEXT    NOT NULL,
    name               TEXT    NOT NULL,
    execution_id       TEXT    NOT NULL,
    status             INTEGER NOT NULL,          -- OrchestrationRuntimeStatus value
    created_at         INTEGER NOT NULL,
    last_updated_at    INTEGER NOT NULL,
    input              TEXT,
    output             TEXT,
    custom_status      TEXT,
    failure            BLOB,                      -- TaskFailureDetails as JSON
    version            TEXT,
    parent_instance_id TEXT,
    parent_task_id     INTEGER,                   -- the parent's TaskScheduled id for a sub-orchestration
    scheduled_start    INTEGER,
    completed_at       INTEGER,
    lease_token        TEXT,
    lease_expires      INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (taskhub, instance_id)
);

-- Listing and paging: ORDER BY created_at, instance_id (optionally within one status).
CREATE INDEX instances_by_created ON instances (taskhub, created_at, instance_id);
CREATE INDEX instances_by_status ON instances (taskhub, status, created_at, instance_id);
CREATE INDEX instances_by_parent ON instances (taskhub, parent_instance_id, created_at, instance_id)
    WHERE parent_instance_id IS NOT NULL;

-- The history of the current execution; seq counts from 0 without gaps.
CREATE TABLE history (
    taskhub     TEXT    NOT NULL,
    instance_id TEXT    NOT NULL,
    seq         INTEGER NOT NULL,
    event       BLOB    NOT NULL,                 -- duratask.history.encode_event
    PRIMARY KEY (taskhub, instance_id, seq)
);

-- Messages waiting for an instance. lease_token marks those handed to the current orchestration lease.
-- A new id is one more than the largest present, so id order is arrival order among the messages
-- that exist (AUTOINCREMENT would also avoid reusing ids of deleted rows, which nothing needs).
CREATE TABLE inbox (
    id          INTEGER PRIMARY KEY,
    taskhub     TEXT    NOT NULL,
    instance_id TEXT    NOT NULL,
    visible_at  INTEGER NOT NULL,
    event       BLOB    NOT NULL,
    lease_token TEXT
);

CREATE INDEX inbox_by_instance ON inbox (taskhub, instance_id, id);
-- Covers the lease scan (visible messages, oldest first) and the next-timer lookup.
CREATE INDEX inbox_by_visible ON inbox (taskhub, visible_at, instance_id);

-- The activity queue; a row lives until its completion is accepted. A reused id cannot confuse a
-- completion: completions are fenced by the lease token, which is never reused.
CREATE TABLE activities (
    id            INTEGER PRIMARY KEY,
    taskhub       TEXT    NOT NULL,
    instance_id   TEXT    NOT NULL,
    execution_id  TEXT    NOT NULL,
    task_id       INTEGER NOT NULL,
    name          TEXT    NOT NULL,
    version       TEXT,
    input         TEXT,
    created_at    INTEGER NOT NULL,
    lease_token   TEXT,
    lease_expires INTEGER NOT NULL DEFAULT 0,
    attempt       INTEGER NOT NULL DEFAULT 0      -- how many times it has been leased
);

-- Free (0) and expired leases sort first, so leasing is an index range scan with no sort.
CREATE INDEX activities_by_lease ON activities (taskhub, lease_expires, id);
CREATE INDEX activities_by_instance ON activities (taskhub, instance_id);
