-- pgq-bridge 0011: indexes that keep the notifications table cheap to work on as it grows.
--
-- A listener with --channels claims `WHERE bridged_at IS NULL AND channel = ANY(...)`: through
-- notifications_unbridged_idx (id) it walks every other channel's unbridged rows first, so one
-- channel's backlog slows every other listener. This index holds only unbridged rows (it stays
-- as small as the backlog) and gives each channel its own range in id order. The cost is one
-- more small index entry per notify(); the entry dies with the bridge's update, as the
-- unbridged index's does.
CREATE INDEX IF NOT EXISTS notifications_unbridged_channel_idx
  ON @schema@.notifications (channel, id) WHERE bridged_at IS NULL;

-- Time-bounded scans (reconcile --since, cleanup's cutoff, growth figures) need a way from a
-- time to the rows: created_at follows id closely, so a BRIN index (a few pages for millions of
-- rows, nothing on the insert path but a summary per filled block range) narrows them to the
-- block ranges of that time. autosummarize: new ranges are summarized as they fill, not only at
-- the next VACUUM.
CREATE INDEX IF NOT EXISTS notifications_created_at_brin
  ON @schema@.notifications USING brin (created_at) WITH (autosummarize = on);
