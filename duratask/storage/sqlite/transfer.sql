-- The SQL of ``duratask export`` / ``duratask import`` on SQLite (``transfer.py``), one named
-- statement per "-- name:" header. {instance_columns} expands as in queries.sql.
-- Pages go by instance id; a page is the id range [:first, :last] of one read transaction, so the
-- history, inbox and activity reads are primary-key or index range scans, not IN lists.

-- name: first_instances
SELECT {instance_columns} FROM instances
WHERE taskhub = :taskhub
ORDER BY instance_id
LIMIT :limit;

-- name: instances_after
SELECT {instance_columns} FROM instances
WHERE taskhub = :taskhub AND instance_id > :after
ORDER BY instance_id
LIMIT :limit;

-- name: history_of_range
SELECT instance_id, event FROM history
WHERE taskhub = :taskhub AND instance_id BETWEEN :first AND :last
ORDER BY instance_id, seq;

-- Leased messages too: a dump carries no lease, so they are delivered again after import.
-- name: inbox_of_range
SELECT instance_id, visible_at, event FROM inbox INDEXED BY inbox_by_instance
WHERE taskhub = :taskhub AND instance_id BETWEEN :first AND :last
ORDER BY instance_id, id;

-- name: activities_of_range
SELECT instance_id, execution_id, task_id, name, input, version, created_at, attempt FROM activities
WHERE taskhub = :taskhub AND instance_id BETWEEN :first AND :last
ORDER BY instance_id, id;

-- name: existing_instance_ids
SELECT instance_id FROM instances
WHERE taskhub = :taskhub AND instance_id IN (SELECT value FROM json_each(:instance_ids))
ORDER BY instance_id;

-- Like insert_activity, keeping the queue time and the delivery count of the dump.
-- name: import_activity
INSERT INTO activities (taskhub, instance_id, execution_id, task_id, name, version, input, created_at, attempt)
VALUES (:taskhub, :instance_id, :execution_id, :task_id, :name, :version, :input, :created_at, :attempt);
