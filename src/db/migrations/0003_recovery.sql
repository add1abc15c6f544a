-- pgq-bridge 0003: recovery (reconcile, playback, cleanup) and the delivery_status view.
-- No index is added on notifications: every index there slows every notify(). Reconcile and
-- cleanup walk the primary key in keyset pages instead.

-- Playback bound of a subscription. Rows of its channel with after_id < id <= playback_through_id
-- that were bridged before subscribed_at never became jobs for this consumer: playback (reconcile,
-- or the worker right after registering a 'beginning' consumer) enqueues them, then sets
-- playback_through_id = after_id so later reconciles skip the range. Rows bridged before the
-- subscription existed have ids <= max(id) at that moment, so the bound is exact.
ALTER TABLE @schema@.subscriptions ADD COLUMN playback_through_id bigint;

-- Existing subscriptions: the last row bridged before each one (the same bound, computed once).
UPDATE @schema@.subscriptions s
   SET playback_through_id = greatest(s.after_id, coalesce(
         (SELECT max(n.id) FROM @schema@.notifications n
           WHERE n.channel = s.channel AND n.bridged_at < s.subscribed_at), 0));

ALTER TABLE @schema@.subscriptions ALTER COLUMN playback_through_id SET DEFAULT 0;
UPDATE @schema@.subscriptions SET playback_through_id = 0 WHERE playback_through_id IS NULL;
ALTER TABLE @schema@.subscriptions ALTER COLUMN playback_through_id SET NOT NULL;

-- `reconcile --failed` reads the dead letters of a consumer; they are few, so a partial index
-- costs little and spares a walk over every completed delivery.
CREATE INDEX deliveries_failed_idx ON @schema@.deliveries (consumer_id, notification_id)
  WHERE status = 'failed';

-- "Did consumer X handle notification Y, and when?" One row per (subscribed consumer, notification
-- it is owed), plus every delivery the ledger recorded for a channel it still subscribes to.
-- status: 'completed' | 'failed' (final, from the ledger), 'pending' (bridged: a job exists or
-- should; no outcome yet), 'unbridged' (not yet a job). Filter by consumer_id and notification_id
-- (or a notification id range): both are index lookups.
CREATE VIEW @schema@.delivery_status AS
SELECT s.consumer_id,
       n.id AS notification_id,
       n.channel,
       n.created_at,
       n.bridged_at,
       CASE
         WHEN d.status IS NOT NULL THEN d.status
         WHEN n.bridged_at IS NULL THEN 'unbridged'
         ELSE 'pending'
       END AS status,
       d.attempts,
       d.last_error,
       d.finished_at
  FROM @schema@.subscriptions s
  JOIN @schema@.notifications n ON n.channel = s.channel
  LEFT JOIN @schema@.deliveries d
         ON d.consumer_id = s.consumer_id AND d.notification_id = n.id
 WHERE n.id > s.after_id OR d.status IS NOT NULL;
