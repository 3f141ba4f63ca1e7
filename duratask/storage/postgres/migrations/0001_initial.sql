-- duratask PostgreSQL schema, version 1.
--
-- Every table carries the task hub, so many hubs share one database. Instance ids use the "C"
-- collation: they sort by code point (as in SQLite), and an id prefix becomes a plain index range.
-- A lease is (lease_token, lease_expires); lease_expires = '-infinity' means "not leased", so
-- "free or expired" is the single range test lease_expires <= now() that the indexes serve.
-- Times are timestamptz, compared against the database clock (now()), which every machine shares.

-- The current execution of each orchestration instance, and its orchestration lease.
CREATE TABLE duratask_instances (
    taskhub            text        NOT NULL,
    instance_id        text        COLLATE "C" NOT NULL,
    name               text        NOT NULL,
    execution_id       text        NOT NULL,
    status             smallint    NOT NULL,          -- OrchestrationRuntimeStatus value
    created_at         timestamptz NOT NULL,
    last_updated_at    timestamptz NOT NULL,
    input              text,
    output             text,
    custom_status      text,
    failure            bytea,                         -- TaskFailureDetails as JSON
    version            text,
    parent_instance_id text        COLLATE "C",
    parent_task_id     integer,
    scheduled_start    timestamptz,
    completed_at       timestamptz,
    history_length     integer     NOT NULL DEFAULT 0, -- rows in duratask_history: the next seq
    lease_token        text,
    lease_expires      timestamptz NOT NULL DEFAULT '-infinity',
    PRIMARY KEY (taskhub, instance_id)
);

-- Listing and paging: ORDER BY created_at, instance_id, optionally within one status (a status
-- filter runs one ordered scan per status and merges them).
CREATE INDEX duratask_instances_by_created ON duratask_instances (taskhub, created_at, instance_id);
CREATE INDEX duratask_instances_by_status ON duratask_instances (taskhub, status, created_at, instance_id);
CREATE INDEX duratask_instances_by_parent ON duratask_instances (taskhub, parent_instance_id)
    WHERE parent_instance_id IS NOT NULL;

-- The history of the current execution; seq counts from 0 without gaps.
CREATE TABLE duratask_history (
    taskhub     text    NOT NULL,
    instance_id text    COLLATE "C" NOT NULL,
    seq         integer NOT NULL,
    event       bytea   NOT NULL,                     -- duratask.history.encode_event
    PRIMARY KEY (taskhub, instance_id, seq)
);

-- Messages waiting for an instance. lease_token marks those handed to the current orchestration lease.
CREATE TABLE duratask_inbox (
    id          bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    taskhub     text        NOT NULL,
    instance_id text        COLLATE "C" NOT NULL,
    visible_at  timestamptz NOT NULL,
    event       bytea       NOT NULL,
    lease_token text
);

CREATE INDEX duratask_inbox_by_instance ON duratask_inbox (taskhub, instance_id, id);
-- The lease scan (visible messages, oldest first) and the next-timer lookup.
CREATE INDEX duratask_inbox_by_visible ON duratask_inbox (taskhub, visible_at) INCLUDE (instance_id);

-- The activity queue; a row lives until its completion is accepted.
CREATE TABLE duratask_activities (
    id            bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    taskhub       text        NOT NULL,
    instance_id   text        COLLATE "C" NOT NULL,
    execution_id  text        NOT NULL,
    task_id       integer     NOT NULL,
    name          text        NOT NULL,
    version       text,
    input         text,
    created_at    timestamptz NOT NULL DEFAULT now(),
    lease_token   text,
    lease_expires timestamptz NOT NULL DEFAULT '-infinity',
    attempt       integer     NOT NULL DEFAULT 0      -- how many times it has been leased
);

-- Free ('-infinity') and expired leases sort first: leasing is an index range scan with no sort.
CREATE INDEX duratask_activities_by_lease ON duratask_activities (taskhub, lease_expires, id);
CREATE INDEX duratask_activities_by_instance ON duratask_activities (taskhub, instance_id);

-- Queue tables churn: vacuum them early so dead rows do not slow the lease scans.
ALTER TABLE duratask_inbox SET (autovacuum_vacuum_scale_factor = 0.02, autovacuum_vacuum_threshold = 200);
ALTER TABLE duratask_activities SET (autovacuum_vacuum_scale_factor = 0.02, autovacuum_vacuum_threshold = 200);
