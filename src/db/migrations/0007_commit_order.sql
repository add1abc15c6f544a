-- pgq-bridge 0007: boundaries in commit order, and playback that resumes where it stopped.
--
-- Why: "stored after X" must mean "committed after X". An id is taken when the row is inserted,
-- not when it commits, so a transaction that inserts id 5 and commits after the one that inserted
-- id 6 makes `id > max(id)` skip row 5: a 'now' consumer registered in between never got it, and a
-- `listen --skip-playback` started in between left it unbridged.
--
-- How: each row records the transaction that wrote it (xid8), and every boundary is a snapshot
-- (pg_current_snapshot()) taken together with max(id). A row is after the boundary iff the
-- snapshot does not see its transaction. The id comparison stays as the fast path: every row with
-- id > the boundary's max(id) is after it; only rows at or below it need the snapshot test.

-- The writing transaction. pg_current_xact_id() is STABLE, so this is a "fast default": existing
-- rows are not rewritten and read back the migration's own transaction, which every later boundary
-- sees as committed (they were stored before it). The writer has an xid anyway (it inserts), so the
-- default costs notify() an 8-byte column and one function call (bench:ingest).
ALTER TABLE @schema@.notifications ADD COLUMN xid xid8 NOT NULL DEFAULT pg_current_xact_id();

-- boundary: the snapshot taken with after_id when a 'now' subscription was created; NULL for
--   'beginning' ones and for subscriptions created before this migration (id order, as before).
-- first_late_id: the lowest id <= after_id that committed after the boundary, written by the bridge
--   batch that enqueued it (the only place that can see such a row first), so that scans in id
--   order (reconcile --verify) start low enough to meet it.
-- playback_cursor: playback (rows bridged before the subscription existed) has enqueued every row
--   up to this id; an interrupted playback resumes after it.
ALTER TABLE @schema@.subscriptions
  ADD COLUMN boundary pg_snapshot,
  ADD COLUMN first_late_id bigint,
  ADD COLUMN playback_cursor bigint NOT NULL DEFAULT 0;

-- Whether a subscription with (after_id, boundary) is owed the row (id, xid). Plain SQL, IMMUTABLE:
-- the planner inlines it, so it costs what the expression costs.
CREATE FUNCTION @schema@.is_owed(id bigint, xid xid8, after_id bigint, boundary pg_snapshot)
RETURNS boolean LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $fn$
  SELECT id > after_id OR (boundary IS NOT NULL AND NOT pg_visible_in_snapshot(xid, boundary))
$fn$;

-- Same columns as 0003; "owed" now follows commit order.
CREATE OR REPLACE VIEW @schema@.delivery_status AS
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
 WHERE @schema@.is_owed(n.id, n.xid, s.after_id, s.boundary) OR d.status IS NOT NULL;
