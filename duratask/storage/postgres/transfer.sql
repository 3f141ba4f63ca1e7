-- The SQL of ``duratask export`` / ``duratask import`` on PostgreSQL (``transfer.py``), one named
-- statement per "-- name:" header. {instance_columns} expands as in queries.sql (alias i).
-- Pages go by instance id (COLLATE "C": code point order, as in SQLite); a page is the id range
-- [first, last] of one REPEATABLE READ transaction, so its reads are index range scans.
-- The import statements take their arrays in binary (%(name)b): parsing thousands of events from
-- text array literals would cost the server several times more than the inserts themselves.

-- name: snapshot
SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY;

-- name: first_instances
SELECT {instance_columns} FROM duratask_instances AS i
WHERE i.taskhub = %(taskhub)s
ORDER BY i.instance_id
LIMIT %(limit)s;

-- name: instances_after
SELECT {instance_columns} FROM duratask_instances AS i
WHERE i.taskhub = %(taskhub)s AND i.instance_id > %(after)s
ORDER BY i.instance_id
LIMIT %(limit)s;

-- name: history_of_range
SELECT instance_id, event FROM duratask_history
WHERE taskhub = %(taskhub)s AND instance_id BETWEEN %(first)s AND %(last)s
ORDER BY instance_id, seq;

-- Leased messages too: a dump carries no lease, so they are delivered again after import.
-- name: inbox_of_range
SELECT instance_id, visible_at, event FROM duratask_inbox
WHERE taskhub = %(taskhub)s AND instance_id BETWEEN %(first)s AND %(last)s
ORDER BY instance_id, id;

-- name: activities_of_range
SELECT instance_id, execution_id, task_id, name, input, version, created_at, attempt FROM duratask_activities
WHERE taskhub = %(taskhub)s AND instance_id BETWEEN %(first)s AND %(last)s
ORDER BY instance_id, id;

-- Locks the existing rows among the ids to import until the batch commits.
-- name: lock_existing
SELECT instance_id FROM duratask_instances
WHERE taskhub = %(taskhub)s AND instance_id = ANY(%(instance_ids)b::text[])
ORDER BY instance_id
FOR UPDATE;

-- With replace: the existing instances go first (in any status; their history, inbox and
-- activities are deleted by the delete_*_of statements of queries.sql).
-- name: delete_instances
DELETE FROM duratask_instances
WHERE taskhub = %(taskhub)s AND instance_id = ANY(%(instance_ids)b::text[]);

-- Unleased, with the history length the lease statement reads. An id created concurrently since
-- lock_existing conflicts and is left out of RETURNING: the caller then fails the batch.
-- name: insert_instances
INSERT INTO duratask_instances (
    taskhub, instance_id, name, execution_id, status, created_at, last_updated_at, input, output,
    custom_status, failure, version, parent_instance_id, parent_task_id, scheduled_start, completed_at,
    history_length
)
SELECT %(taskhub)s, r.*
FROM unnest(
    %(instance_ids)b::text[], %(names)b::text[], %(execution_ids)b::text[], %(statuses)b::smallint[],
    %(created_ats)b::timestamptz[], %(last_updated_ats)b::timestamptz[], %(inputs)b::text[],
    %(outputs)b::text[], %(custom_statuses)b::text[], %(failures)b::bytea[], %(versions)b::text[],
    %(parent_instance_ids)b::text[], %(parent_task_ids)b::integer[], %(scheduled_starts)b::timestamptz[],
    %(completed_ats)b::timestamptz[], %(history_lengths)b::integer[]
) AS r
ON CONFLICT DO NOTHING
RETURNING instance_id;

-- name: insert_history
INSERT INTO duratask_history (taskhub, instance_id, seq, event)
SELECT %(taskhub)s, h.instance_id, h.seq, h.event
FROM unnest(%(instance_ids)b::text[], %(seqs)b::integer[], %(events)b::bytea[]) AS h(instance_id, seq, event);

-- In the order given: identity ids keep the arrival order of each inbox.
-- name: insert_inbox
INSERT INTO duratask_inbox (taskhub, instance_id, visible_at, event)
SELECT %(taskhub)s, m.instance_id, m.visible_at, m.event
FROM unnest(%(instance_ids)b::text[], %(visible_ats)b::timestamptz[], %(events)b::bytea[])
     WITH ORDINALITY AS m(instance_id, visible_at, event, ord)
ORDER BY m.ord;

-- name: insert_activities
INSERT INTO duratask_activities (taskhub, instance_id, execution_id, task_id, name, version, input, created_at, attempt)
SELECT %(taskhub)s, a.instance_id, a.execution_id, a.task_id, a.name, a.version, a.input, a.created_at, a.attempt
FROM unnest(
    %(instance_ids)b::text[], %(execution_ids)b::text[], %(task_ids)b::integer[], %(names)b::text[],
    %(versions)b::text[], %(inputs)b::text[], %(created_ats)b::timestamptz[], %(attempts)b::integer[]
) WITH ORDINALITY AS a(instance_id, execution_id, task_id, name, version, input, created_at, attempt, ord)
ORDER BY a.ord;
