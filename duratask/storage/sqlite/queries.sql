-- The SQL of the SQLite storage, one named statement per "-- name:" header.
-- ``duratask.storage.sqlite.sql`` loads this file; {instance_columns} expands to the column list
-- that ``rows.instance_from_row`` reads. Parameters are named; every statement is scoped to :taskhub.

-- name: create_schema_table
CREATE TABLE IF NOT EXISTS duratask_schema (
    version    INTEGER PRIMARY KEY,
    name       TEXT    NOT NULL,
    applied_at INTEGER NOT NULL
);

-- name: schema_version
SELECT COALESCE(MAX(version), 0) FROM duratask_schema;

-- name: record_migration
INSERT INTO duratask_schema (version, name, applied_at) VALUES (:version, :name, :applied_at);

-- --- instances ---------------------------------------------------------------------------------

-- name: get_instance
SELECT {instance_columns} FROM instances WHERE taskhub = :taskhub AND instance_id = :instance_id;

-- name: instance_status
SELECT status, execution_id FROM instances WHERE taskhub = :taskhub AND instance_id = :instance_id;

-- name: insert_instance
INSERT INTO instances (
    taskhub, instance_id, name, execution_id, status, created_at, last_updated_at, input, output,
    custom_status, failure, version, parent_instance_id, parent_task_id, scheduled_start, completed_at
) VALUES (
    :taskhub, :instance_id, :name, :execution_id, :status, :created_at, :last_updated_at, :input, :output,
    :custom_status, :failure, :version, :parent_instance_id, :parent_task_id, :scheduled_start, :completed_at
);

-- What an episode changes, and the lease released. The columns that identify the instance and
-- head the indexes (name, created_at, parent) are left alone: writing them, even unchanged, would
-- rewrite index entries; update_instance_identity handles the rare commit that changes them.
-- name: update_instance_and_release
UPDATE instances SET
    execution_id = :execution_id, status = :status, last_updated_at = :last_updated_at,
    input = :input, output = :output, custom_status = :custom_status, failure = :failure,
    version = :version, scheduled_start = :scheduled_start, completed_at = :completed_at,
    lease_token = NULL, lease_expires = 0
WHERE taskhub = :taskhub AND instance_id = :instance_id;

-- name: update_instance_identity
UPDATE instances SET
    name = :name, created_at = :created_at, parent_instance_id = :parent_instance_id,
    parent_task_id = :parent_task_id
WHERE taskhub = :taskhub AND instance_id = :instance_id;

-- name: delete_instance_row
DELETE FROM instances WHERE taskhub = :taskhub AND instance_id = :instance_id;

-- Whatever its status: no live lease, nothing in its inbox, no activities.
-- name: delete_idle_instance
DELETE FROM instances
WHERE taskhub = :taskhub AND instance_id = :instance_id AND lease_expires <= :now
    AND NOT EXISTS (SELECT 1 FROM inbox WHERE taskhub = :taskhub AND instance_id = :instance_id)
    AND NOT EXISTS (SELECT 1 FROM activities WHERE taskhub = :taskhub AND instance_id = :instance_id);

-- name: delete_instance_history
DELETE FROM history WHERE taskhub = :taskhub AND instance_id = :instance_id;

-- name: delete_instance_inbox
DELETE FROM inbox WHERE taskhub = :taskhub AND instance_id = :instance_id;

-- name: delete_instance_activities
DELETE FROM activities WHERE taskhub = :taskhub AND instance_id = :instance_id;

-- name: child_instance_ids
SELECT instance_id FROM instances
WHERE taskhub = :taskhub AND parent_instance_id = :instance_id
ORDER BY created_at, instance_id;

-- --- history -----------------------------------------------------------------------------------

-- name: get_history
SELECT event FROM history WHERE taskhub = :taskhub AND instance_id = :instance_id ORDER BY seq;

-- name: history_lengths
SELECT instance_id, MAX(seq) + 1 FROM history
WHERE taskhub = :taskhub AND instance_id IN (SELECT value FROM json_each(:instance_ids))
GROUP BY instance_id;

-- name: insert_history
INSERT INTO history (taskhub, instance_id, seq, event) VALUES (:taskhub, :instance_id, :seq, :event);

-- --- inbox -------------------------------------------------------------------------------------

-- name: insert_message
INSERT INTO inbox (taskhub, instance_id, visible_at, event)
VALUES (:taskhub, :instance_id, :visible_at, :event);

-- A message for an instance that does not exist is dropped.
-- name: insert_message_if_instance_exists
INSERT INTO inbox (taskhub, instance_id, visible_at, event)
SELECT :taskhub, :instance_id, :visible_at, :event
WHERE EXISTS (SELECT 1 FROM instances WHERE taskhub = :taskhub AND instance_id = :instance_id);

-- name: any_visible_messages
SELECT EXISTS (
    SELECT 1 FROM inbox INDEXED BY inbox_by_instance
    WHERE taskhub = :taskhub AND instance_id IN (SELECT value FROM json_each(:instance_ids))
        AND visible_at <= :now
);

-- Includes messages of leased instances: waking for one of them costs a spurious poll at most,
-- while leaving it out could make a worker oversleep a timer set during the lease.
-- name: next_visible_at
SELECT MIN(visible_at) FROM inbox WHERE taskhub = :taskhub AND visible_at > :now;

-- --- orchestration leases ----------------------------------------------------------------------

-- Instances with a visible message and no live lease, oldest visible message first; none whose id
-- starts with :exclude_id_prefix.
-- name: orchestration_candidates
SELECT DISTINCT m.instance_id
FROM inbox AS m
JOIN instances AS i ON i.taskhub = m.taskhub AND i.instance_id = m.instance_id
WHERE m.taskhub = :taskhub AND m.visible_at <= :now AND i.lease_expires <= :now
    AND (:exclude_id_prefix IS NULL OR substr(m.instance_id, 1, length(:exclude_id_prefix)) <> :exclude_id_prefix)
LIMIT :limit;

-- The same among the ids in [:id_from, :id_to) (an id prefix as a range of the instance index:
-- leasing entities, "@...", does not walk the orchestrations' messages).
-- name: candidates_in_range
SELECT m.instance_id
FROM inbox AS m INDEXED BY inbox_by_instance
JOIN instances AS i ON i.taskhub = m.taskhub AND i.instance_id = m.instance_id
WHERE m.taskhub = :taskhub AND m.instance_id >= :id_from AND m.instance_id < :id_to
    AND m.visible_at <= :now AND i.lease_expires <= :now
    AND (:exclude_id_prefix IS NULL OR substr(m.instance_id, 1, length(:exclude_id_prefix)) <> :exclude_id_prefix)
GROUP BY m.instance_id
ORDER BY min(m.visible_at)
LIMIT :limit;

-- name: take_instance_lease
UPDATE instances SET lease_token = :token, lease_expires = :expires
WHERE taskhub = :taskhub AND instance_id = :instance_id;

-- Marks every visible message, including those of an expired lease, with the new token.
-- (INDEXED BY: by visible time the planner would walk every visible message of the hub.)
-- name: mark_messages
UPDATE inbox INDEXED BY inbox_by_instance SET lease_token = :token
WHERE taskhub = :taskhub AND instance_id = :instance_id AND visible_at <= :now;

-- name: leased_instances
SELECT {instance_columns} FROM instances
WHERE taskhub = :taskhub AND instance_id IN (SELECT value FROM json_each(:instance_ids));

-- name: leased_messages
SELECT m.instance_id, m.event
FROM inbox AS m
JOIN instances AS i ON i.taskhub = m.taskhub AND i.instance_id = m.instance_id AND m.lease_token = i.lease_token
WHERE m.taskhub = :taskhub AND m.instance_id IN (SELECT value FROM json_each(:instance_ids))
ORDER BY m.id;

-- name: instance_leases
SELECT instance_id, lease_token, lease_expires, status, name, created_at, parent_instance_id, parent_task_id
FROM instances
WHERE taskhub = :taskhub AND instance_id IN (SELECT value FROM json_each(:instance_ids));

-- name: consume_messages
DELETE FROM inbox WHERE taskhub = :taskhub AND instance_id = :instance_id AND lease_token = :token;

-- name: renew_instance_lease
UPDATE instances SET lease_expires = :expires
WHERE taskhub = :taskhub AND instance_id = :instance_id AND lease_token = :token AND lease_expires > :now;

-- name: release_instance_lease
UPDATE instances SET lease_token = NULL, lease_expires = 0
WHERE taskhub = :taskhub AND instance_id = :instance_id AND lease_token = :token;

-- name: unmark_messages
UPDATE inbox SET lease_token = NULL
WHERE taskhub = :taskhub AND instance_id = :instance_id AND lease_token = :token;

-- --- activities --------------------------------------------------------------------------------

-- name: insert_activity
INSERT INTO activities (taskhub, instance_id, execution_id, task_id, name, version, input, created_at)
VALUES (:taskhub, :instance_id, :execution_id, :task_id, :name, :version, :input, :created_at);

-- Free and expired activities, free ones first, each under a fresh random token.
-- name: lease_activities
UPDATE activities
SET lease_token = lower(hex(randomblob(16))), lease_expires = :expires, attempt = attempt + 1
WHERE id IN (
    SELECT id FROM activities
    WHERE taskhub = :taskhub AND lease_expires <= :now
    ORDER BY lease_expires, id
    LIMIT :limit
)
RETURNING id, lease_token, instance_id, execution_id, task_id, name, input, version, attempt;

-- name: activity_lease
SELECT lease_token, lease_expires, instance_id, execution_id FROM activities
WHERE taskhub = :taskhub AND id = :id;

-- name: delete_activity
DELETE FROM activities WHERE taskhub = :taskhub AND id = :id;

-- name: renew_activity_lease
UPDATE activities SET lease_expires = :expires
WHERE taskhub = :taskhub AND id = :id AND lease_token = :token AND lease_expires > :now;

-- name: release_activity_lease
UPDATE activities SET lease_token = NULL, lease_expires = 0
WHERE taskhub = :taskhub AND id = :id AND lease_token = :token;
