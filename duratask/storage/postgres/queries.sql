-- The SQL of the PostgreSQL storage, one named statement per "-- name:" header.
-- ``duratask.storage.postgres.sql`` loads this file; {instance_columns} expands to the column list
-- that ``rows.instance_from_row`` reads, qualified by the alias i. Parameters are psycopg's
-- %(name)s; every statement is scoped to %(taskhub)s. Leases and fences read the database clock
-- (now(), the transaction's start), never the client's: many machines share one database.

-- --- schema versions ---------------------------------------------------------------------------

-- Serialises migrators of one database (several processes may start at once).
-- name: lock_schema
SELECT pg_advisory_xact_lock(%(key)s);

-- name: create_schema_table
CREATE TABLE IF NOT EXISTS duratask_schema (
    version    integer     PRIMARY KEY,
    name       text        NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
);

-- name: schema_table_exists
SELECT to_regclass('duratask_schema') IS NOT NULL;

-- name: schema_version
SELECT COALESCE(max(version), 0) FROM duratask_schema;

-- name: record_migration
INSERT INTO duratask_schema (version, name) VALUES (%(version)s, %(name)s);

-- Writes run in pipeline mode: statements go out without waiting for one another, and the client
-- waits only where it reads a result. Statements whose outcome matters therefore RETURN a row.

-- --- instances ---------------------------------------------------------------------------------

-- name: get_instance
SELECT {instance_columns} FROM duratask_instances AS i
WHERE i.taskhub = %(taskhub)s AND i.instance_id = %(instance_id)s;

-- Locks the rows of ids about to be created, so a concurrent creator waits for our decision.
-- name: lock_instance_statuses
SELECT instance_id, status FROM duratask_instances
WHERE taskhub = %(taskhub)s AND instance_id = ANY(%(instance_ids)s::text[])
ORDER BY instance_id
FOR UPDATE;

-- Conflicts only with an instance created concurrently since the lock above: it is unfinished.
-- name: insert_instances
INSERT INTO duratask_instances (
    taskhub, instance_id, name, execution_id, status, created_at, last_updated_at, input, output,
    custom_status, failure, version, parent_instance_id, parent_task_id, scheduled_start, completed_at
)
SELECT %(taskhub)s, r.instance_id, r.name, r.execution_id, r.status, r.created_at, r.last_updated_at,
       r.input, r.output, r.custom_status, r.failure, r.version, r.parent_instance_id, r.parent_task_id,
       r.scheduled_start, r.completed_at
FROM unnest(
    %(instance_ids)b::text[], %(names)b::text[], %(execution_ids)b::text[], %(statuses)b::smallint[],
    %(created_ats)b::timestamptz[], %(last_updated_ats)b::timestamptz[], %(inputs)b::text[],
    %(outputs)b::text[], %(custom_statuses)b::text[], %(failures)b::bytea[], %(versions)b::text[],
    %(parent_instance_ids)b::text[], %(parent_task_ids)b::integer[], %(scheduled_starts)b::timestamptz[],
    %(completed_ats)b::timestamptz[]
) WITH ORDINALITY AS r(
    instance_id, name, execution_id, status, created_at, last_updated_at, input, output, custom_status,
    failure, version, parent_instance_id, parent_task_id, scheduled_start, completed_at, ord
)
ORDER BY r.ord
ON CONFLICT DO NOTHING
RETURNING instance_id;

-- One statement for a whole group commit (rows as arrays), releasing each lease.
-- name: update_instances_and_release
UPDATE duratask_instances AS i SET
    name = r.name, execution_id = r.execution_id, status = r.status, created_at = r.created_at,
    last_updated_at = r.last_updated_at, input = r.input, output = r.output,
    custom_status = r.custom_status, failure = r.failure, version = r.version,
    parent_instance_id = r.parent_instance_id, parent_task_id = r.parent_task_id,
    scheduled_start = r.scheduled_start, completed_at = r.completed_at,
    history_length = r.history_length, lease_token = NULL, lease_expires = '-infinity'
FROM unnest(
    %(instance_ids)b::text[], %(names)b::text[], %(execution_ids)b::text[], %(statuses)b::smallint[],
    %(created_ats)b::timestamptz[], %(last_updated_ats)b::timestamptz[], %(inputs)b::text[],
    %(outputs)b::text[], %(custom_statuses)b::text[], %(failures)b::bytea[], %(versions)b::text[],
    %(parent_instance_ids)b::text[], %(parent_task_ids)b::integer[], %(scheduled_starts)b::timestamptz[],
    %(completed_ats)b::timestamptz[], %(history_lengths)b::integer[]
) AS r(
    instance_id, name, execution_id, status, created_at, last_updated_at, input, output, custom_status,
    failure, version, parent_instance_id, parent_task_id, scheduled_start, completed_at, history_length
)
WHERE i.taskhub = %(taskhub)s AND i.instance_id = r.instance_id;

-- name: delete_terminal_instances
DELETE FROM duratask_instances
WHERE taskhub = %(taskhub)s AND instance_id = ANY(%(instance_ids)s::text[])
  AND status = ANY(%(terminal)s::smallint[])
RETURNING instance_id;

-- The ids about to be deleted if idle, locked first: a writer adding a message (FOR KEY SHARE)
-- finishes before, and the next statement, with a fresh snapshot, sees its message.
-- name: lock_instances_for_delete
SELECT instance_id FROM duratask_instances
WHERE taskhub = %(taskhub)s AND instance_id = ANY(%(instance_ids)s::text[])
ORDER BY instance_id
FOR UPDATE;

-- Whatever its status: no live lease, nothing in its inbox, no activities.
-- name: delete_idle_instances
DELETE FROM duratask_instances AS i
WHERE i.taskhub = %(taskhub)s AND i.instance_id = ANY(%(instance_ids)s::text[]) AND i.lease_expires <= now()
  AND NOT EXISTS (SELECT 1 FROM duratask_inbox AS m WHERE m.taskhub = i.taskhub AND m.instance_id = i.instance_id)
  AND NOT EXISTS (
      SELECT 1 FROM duratask_activities AS a WHERE a.taskhub = i.taskhub AND a.instance_id = i.instance_id
  )
RETURNING i.instance_id;

-- name: delete_history_of
DELETE FROM duratask_history WHERE taskhub = %(taskhub)s AND instance_id = ANY(%(instance_ids)s::text[]);

-- name: delete_inbox_of
DELETE FROM duratask_inbox WHERE taskhub = %(taskhub)s AND instance_id = ANY(%(instance_ids)s::text[]);

-- name: delete_activities_of
DELETE FROM duratask_activities WHERE taskhub = %(taskhub)s AND instance_id = ANY(%(instance_ids)s::text[]);

-- name: child_instance_ids
SELECT instance_id FROM duratask_instances
WHERE taskhub = %(taskhub)s AND parent_instance_id = %(instance_id)s
ORDER BY created_at, instance_id;

-- --- history -----------------------------------------------------------------------------------

-- name: get_history
SELECT event FROM duratask_history
WHERE taskhub = %(taskhub)s AND instance_id = %(instance_id)s
ORDER BY seq;

-- name: insert_history
INSERT INTO duratask_history (taskhub, instance_id, seq, event)
SELECT %(taskhub)s, h.instance_id, h.seq, h.event
FROM unnest(%(instance_ids)s::text[], %(seqs)s::integer[], %(events)s::bytea[]) AS h(instance_id, seq, event);

-- --- inbox -------------------------------------------------------------------------------------

-- name: insert_message
INSERT INTO duratask_inbox (taskhub, instance_id, visible_at, event)
VALUES (%(taskhub)s, %(instance_id)s, %(visible_at)s, %(event)s);

-- Messages for instances that do not exist are dropped. FOR KEY SHARE holds the instance until we
-- commit, so a concurrent purge either ran before (message dropped) or deletes the message after.
-- Each message carries its instance's runner (migration 0003).
-- name: insert_messages_if_instance_exists
INSERT INTO duratask_inbox (taskhub, instance_id, visible_at, event, runner)
SELECT %(taskhub)s, m.instance_id, m.visible_at, m.event, i.runner
FROM unnest(%(instance_ids)s::text[], %(visible_ats)s::timestamptz[], %(events)s::bytea[])
     WITH ORDINALITY AS m(instance_id, visible_at, event, ord)
CROSS JOIN LATERAL (
    SELECT i.runner FROM duratask_instances AS i
    WHERE i.taskhub = %(taskhub)s AND i.instance_id = m.instance_id
    FOR KEY SHARE
) AS i
ORDER BY m.ord;

-- name: any_visible_message
SELECT EXISTS (
    SELECT 1 FROM duratask_inbox
    WHERE taskhub = %(taskhub)s AND instance_id = ANY(%(instance_ids)s::text[]) AND visible_at <= now()
);

-- Includes messages of leased instances: waking for one of them costs a spurious poll at most,
-- while leaving it out could make a worker oversleep a timer set during the lease.
-- name: next_visible_at
SELECT min(visible_at) FROM duratask_inbox WHERE taskhub = %(taskhub)s AND visible_at > now();

-- --- orchestration leases ----------------------------------------------------------------------

-- Leasing, in one statement (one round trip, its own transaction), each step an index walk that
-- stops early, in a shape the planner cannot turn into a join or sort of the whole backlog:
-- 1. ready: the %(scan_limit)s messages that became leasable first, in the order of the index
--    duratask_inbox_by_ready (free visible messages by visible_at; those of an expired lease by
--    its expiry), read without locks.
-- 2. picked: their instances, each with its oldest such message, oldest first.
-- 3. locked: walking those in order, lock each instance whose lease is free or expired (a lookup
--    by primary key per instance, LATERAL so that it stays one), until %(limit)s are locked.
--    SKIP LOCKED passes over instances another leaser or committer holds right now; PostgreSQL
--    re-checks each locked row as it is now, so an instance leased by someone else since our
--    snapshot drops out. The messages are not locked: an instance whose messages were all
--    consumed by a whole lease and commit of another worker after our snapshot comes back with
--    no messages marked, and the caller releases that lease at once (ops.lease_orchestrations).
-- 4. deliverable: the leasable messages of each (free and visible, or left by an expired lease),
--    by the inbox's instance index (LATERAL and OFFSET 0: one index lookup per instance).
-- 5. taken: lease each under a fresh token (RETURNING reads the row as it is now).
-- 6. marked: deliver those messages to the new lease; messages arriving later stay free and wait
--    for the next lease.
-- The caller runs this with sequential and bitmap scans off (see ops.PLAN_BY_INDEX): whatever the
-- statistics say (a fresh database has none), the backlog is read through the ordered index.
-- NO KEY UPDATE does not conflict with the KEY SHARE of a writer adding a message meanwhile.
-- With %(id_from)s only the instances whose id is in [%(id_from)s, %(id_to)s) (an id prefix as a
-- range: leasing entities, "@...", does not take orchestrations).
-- %(preferred)s: instances to take before all others (the caller just delivered them a message in
-- this transaction: its next step stays in the process that ran the last one). They rank first
-- (ready at the epoch); one already leased elsewhere is skipped like any other.
-- name: lease_orchestrations
WITH ready AS MATERIALIZED (
    SELECT p.instance_id, 'epoch'::timestamptz AS ready_at, NULL::text AS runner
    FROM unnest(%(preferred)s::text[]) AS p(instance_id)
    WHERE (%(exclude_id_prefix)s::text IS NULL OR NOT starts_with(p.instance_id, %(exclude_id_prefix)s::text))
      AND (%(id_from)s::text IS NULL OR (p.instance_id >= %(id_from)s::text AND p.instance_id < %(id_to)s::text))
    UNION ALL
    (SELECT m.instance_id, COALESCE(m.leased_until, m.visible_at) AS ready_at, m.runner
    FROM duratask_inbox AS m
    WHERE m.taskhub = %(taskhub)s AND COALESCE(m.leased_until, m.visible_at) <= now()
      AND (%(exclude_id_prefix)s::text IS NULL OR NOT starts_with(m.instance_id, %(exclude_id_prefix)s::text))
      AND (%(id_from)s::text IS NULL OR (m.instance_id >= %(id_from)s::text AND m.instance_id < %(id_to)s::text))
    ORDER BY COALESCE(m.leased_until, m.visible_at)
    LIMIT %(scan_limit)s)
), picked AS MATERIALIZED (
    -- Instances another process ran last go after the others (migration 0003).
    SELECT instance_id, min(ready_at) AS first_ready FROM ready GROUP BY instance_id
    ORDER BY bool_and(runner IS NOT NULL AND runner <> %(origin)s::text), first_ready
), locked AS MATERIALIZED (
    SELECT l.row_id, l.instance_id, p.first_ready
    FROM picked AS p
    CROSS JOIN LATERAL (
        SELECT i.ctid AS row_id, i.instance_id FROM duratask_instances AS i
        WHERE i.taskhub = %(taskhub)s AND i.instance_id = p.instance_id AND i.lease_expires <= now()
        FOR NO KEY UPDATE SKIP LOCKED
    ) AS l
    LIMIT %(limit)s
), deliverable AS MATERIALIZED (
    SELECT d.row_id
    FROM locked AS l
    CROSS JOIN LATERAL (
        SELECT m.ctid AS row_id FROM duratask_inbox AS m
        WHERE m.taskhub = %(taskhub)s AND m.instance_id = l.instance_id
          AND COALESCE(m.leased_until, m.visible_at) <= now()
        OFFSET 0
    ) AS d
), taken AS (
    -- By the row versions just locked (a TID scan). A lease's token is a hash of this statement's
    -- random nonce and the instance id: the messages get it below without a join to this.
    UPDATE duratask_instances AS i
    SET lease_token = md5(%(nonce)s::text || i.instance_id)::uuid::text,
        lease_expires = now() + make_interval(secs => %(lease_seconds)s::float8), runner = %(origin)s::text
    WHERE i.ctid = ANY(ARRAY(SELECT row_id FROM locked))
    RETURNING {instance_columns}, i.history_length, i.lease_token, i.lease_expires
), marked AS (
    UPDATE duratask_inbox AS m
    SET lease_token = md5(%(nonce)s::text || m.instance_id)::uuid::text,
        leased_until = now() + make_interval(secs => %(lease_seconds)s::float8)
    WHERE m.ctid = ANY(ARRAY(SELECT row_id FROM deliverable)) AND COALESCE(m.leased_until, m.visible_at) <= now()
    RETURNING m.instance_id, m.id, m.event
)
-- Three kinds of rows, no join between them (the caller puts them together): each lease, each
-- message delivered, and the order of the leases (oldest message first).
SELECT 'lease', NULL::timestamptz, NULL::bigint, NULL::bytea, i.history_length, i.lease_token,
       i.lease_expires, {instance_columns}
FROM taken AS i
UNION ALL
SELECT 'message', NULL, m.id, m.event, NULL, NULL, NULL, m.instance_id, {instance_padding}
FROM marked AS m
UNION ALL
SELECT 'order', l.first_ready, NULL, NULL, NULL, NULL, NULL, l.instance_id, {instance_padding}
FROM locked AS l;

-- The fence of a batch of commits: the rows whose lease is live, locked until the batch commits.
-- NO KEY UPDATE (what the UPDATE of the row takes anyway) leaves the rows open to the KEY SHARE
-- of writers that only check the instance exists: two instances committing messages to each
-- other at once cannot deadlock.
-- name: lock_live_leases
SELECT instance_id, lease_token, history_length, status FROM duratask_instances
WHERE taskhub = %(taskhub)s AND instance_id = ANY(%(instance_ids)s::text[]) AND lease_expires > now()
ORDER BY instance_id
FOR NO KEY UPDATE;

-- name: consume_messages
DELETE FROM duratask_inbox
WHERE taskhub = %(taskhub)s AND instance_id = ANY(%(instance_ids)s::text[])
  AND lease_token = ANY(%(tokens)s::text[]);

-- name: release_instance_lease
UPDATE duratask_instances SET lease_token = NULL, lease_expires = '-infinity'
WHERE taskhub = %(taskhub)s AND instance_id = %(instance_id)s AND lease_token = %(token)s
RETURNING instance_id;

-- name: unmark_messages
UPDATE duratask_inbox SET lease_token = NULL, leased_until = NULL
WHERE taskhub = %(taskhub)s AND instance_id = %(instance_id)s AND lease_token = %(token)s;

-- --- activities --------------------------------------------------------------------------------

-- name: insert_activities
INSERT INTO duratask_activities (taskhub, instance_id, execution_id, task_id, name, version, input)
SELECT %(taskhub)s, a.instance_id, a.execution_id, a.task_id, a.name, a.version, a.input
FROM unnest(
    %(instance_ids)s::text[], %(execution_ids)s::text[], %(task_ids)s::integer[], %(names)s::text[],
    %(versions)s::text[], %(inputs)s::text[]
) WITH ORDINALITY AS a(instance_id, execution_id, task_id, name, version, input, ord)
ORDER BY a.ord;

-- The same, the first %(take)s of them leased at once by the committer (nobody else can see them
-- before the COMMIT, so there is nothing to lock or skip); all rows come back, free ones with no token.
-- name: insert_activities_leasing_first
INSERT INTO duratask_activities (
    taskhub, instance_id, execution_id, task_id, name, version, input, lease_token, lease_expires, attempt
)
SELECT %(taskhub)s, a.instance_id, a.execution_id, a.task_id, a.name, a.version, a.input,
       CASE WHEN a.ord <= %(take)s THEN gen_random_uuid()::text END,
       CASE WHEN a.ord <= %(take)s THEN now() + make_interval(secs => %(lease_seconds)s::float8)
            ELSE '-infinity'::timestamptz END,
       CASE WHEN a.ord <= %(take)s THEN 1 ELSE 0 END
FROM unnest(
    %(instance_ids)s::text[], %(execution_ids)s::text[], %(task_ids)s::integer[], %(names)s::text[],
    %(versions)s::text[], %(inputs)s::text[]
) WITH ORDINALITY AS a(instance_id, execution_id, task_id, name, version, input, ord)
ORDER BY a.ord
RETURNING id, lease_token, NULLIF(lease_expires, '-infinity'), instance_id, execution_id, task_id, name, input,
          version, attempt;

-- Free and expired activities, free ones first, each under a fresh random token.
-- name: lease_activities
WITH picked AS (
    SELECT id FROM duratask_activities
    WHERE taskhub = %(taskhub)s AND lease_expires <= now()
    ORDER BY lease_expires, id
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
)
UPDATE duratask_activities AS a
SET lease_token = gen_random_uuid()::text,
    lease_expires = now() + make_interval(secs => %(lease_seconds)s::float8),
    attempt = a.attempt + 1
FROM picked
WHERE a.id = picked.id
RETURNING a.id, a.lease_token, a.lease_expires, a.instance_id, a.execution_id, a.task_id, a.name,
          a.input, a.version, a.attempt;

-- The fence of a batch of completions: only activities whose lease is live and held by the token.
-- name: take_completed_activities
DELETE FROM duratask_activities AS a
USING unnest(%(ids)s::bigint[], %(tokens)s::text[]) AS c(id, token)
WHERE a.taskhub = %(taskhub)s AND a.id = c.id AND a.lease_token = c.token AND a.lease_expires > now()
RETURNING a.id, a.lease_token, a.instance_id, a.execution_id;

-- A result reaches its instance only while the execution that scheduled it still runs; it carries
-- the instance's runner (migration 0003).
-- name: deliver_activity_results
INSERT INTO duratask_inbox (taskhub, instance_id, visible_at, event, runner)
SELECT %(taskhub)s, r.instance_id, now(), r.event, i.runner
FROM unnest(%(instance_ids)s::text[], %(execution_ids)s::text[], %(events)s::bytea[])
     WITH ORDINALITY AS r(instance_id, execution_id, event, ord)
CROSS JOIN LATERAL (
    SELECT i.runner FROM duratask_instances AS i
    WHERE i.taskhub = %(taskhub)s AND i.instance_id = r.instance_id AND i.execution_id = r.execution_id
      AND i.status <> ALL(%(terminal)s::smallint[])
    FOR KEY SHARE
) AS i
ORDER BY r.ord
RETURNING instance_id, runner;

-- The instance's lease and the delivered messages' copy of its expiry (what leasing looks at).
-- name: renew_instance_lease
WITH renewed AS (
    UPDATE duratask_instances
    SET lease_expires = now() + make_interval(secs => %(lease_seconds)s::float8)
    WHERE taskhub = %(taskhub)s AND instance_id = %(instance_id)s AND lease_token = %(token)s
      AND lease_expires > now()
    RETURNING lease_expires
), marked AS (
    UPDATE duratask_inbox AS m SET leased_until = r.lease_expires
    FROM renewed AS r
    WHERE m.taskhub = %(taskhub)s AND m.instance_id = %(instance_id)s AND m.lease_token = %(token)s
    RETURNING m.id
)
SELECT (SELECT count(*) FROM renewed) AS renewed, (SELECT count(*) FROM marked) AS marked;

-- name: renew_activity_lease
UPDATE duratask_activities SET lease_expires = now() + make_interval(secs => %(lease_seconds)s::float8)
WHERE taskhub = %(taskhub)s AND id = %(id)s AND lease_token = %(token)s AND lease_expires > now()
RETURNING id;

-- name: release_activity_lease
UPDATE duratask_activities SET lease_token = NULL, lease_expires = '-infinity'
WHERE taskhub = %(taskhub)s AND id = %(id)s AND lease_token = %(token)s
RETURNING id;

-- Statements of the worker's hot paths read a handful of rows by key; they run with sequential and
-- bitmap scans off, for this transaction only, so that tables that grew from nothing since their
-- last ANALYZE (say a fresh database under a burst of starts) are still read by index.
-- name: plan_by_index
SELECT set_config('enable_seqscan', 'off', true), set_config('enable_bitmapscan', 'off', true);

-- --- wake-ups ----------------------------------------------------------------------------------

-- Delivered to listeners when (and only if) the transaction commits.
-- name: notify
SELECT pg_notify(%(channel)s, payload) FROM unnest(%(payloads)s::text[]) AS payload;
