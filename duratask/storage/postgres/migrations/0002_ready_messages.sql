-- duratask PostgreSQL schema, version 2: leasing reads a short ordered range of one index.
--
-- Each inbox message gets leased_until: NULL while no lease holds it, else the expiry of the lease
-- it was delivered to. COALESCE(leased_until, visible_at) is then the moment the message can be
-- leased (again): its visible_at while free, its lease's expiry while delivered. A lease walks that
-- expression's index from the oldest entry and stops after a few times its limit, so messages
-- held by live leases (their key lies in the future) and timers not yet due are never read, and
-- the messages of an expired lease come back by themselves. No join or sort of the whole backlog
-- happens before rows are locked (version 1 joined every visible message to its instance first).

ALTER TABLE duratask_inbox ADD COLUMN leased_until timestamptz;

-- Messages delivered to a lease that still holds them.
UPDATE duratask_inbox AS m SET leased_until = i.lease_expires
FROM duratask_instances AS i
WHERE m.lease_token IS NOT NULL AND i.taskhub = m.taskhub AND i.instance_id = m.instance_id
  AND i.lease_token = m.lease_token;

CREATE INDEX duratask_inbox_by_ready ON duratask_inbox (taskhub, (COALESCE(leased_until, visible_at)))
    INCLUDE (instance_id);

-- duratask_inbox_by_visible stays: next_visible_at (the next timer) reads it, where the entries of
-- live leases (in the past) are out of its way.
