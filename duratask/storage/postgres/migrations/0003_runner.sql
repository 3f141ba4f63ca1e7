-- duratask PostgreSQL schema, version 3: leases keep an instance where it ran last.
--
-- runner is the origin (one per storage object, that is per worker process) of the last lease
-- an instance was given; an activity result (or any message) delivered to the instance carries a
-- copy. Among the first messages a lease reads, it takes those of instances it ran last, and those
-- nobody ran yet, before those another process ran: that process holds their executors in its
-- cache and will most likely lease them itself, while this one would have to replay their
-- histories. Only the order changes: whatever is left over is taken as before.

ALTER TABLE duratask_instances ADD COLUMN runner text;
ALTER TABLE duratask_inbox ADD COLUMN runner text;
