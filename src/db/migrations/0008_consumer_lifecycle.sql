-- pgq-bridge 0008: the life of a consumer: registration history, explicit removal, skipped
-- deliveries.
--
-- Why: during a rolling deploy an old and a new version of a consumer run side by side and both
-- register. Registration used to make the registering definition the truth: an old replica that
-- restarted deleted the new version's channels (every notification of them was bridged to
-- nobody) and put back its own job options. Now registration only adds, and removal is explicit
-- (`pgq-bridge consumers remove`).

-- Every definition of a consumer ever registered, by fingerprint (a hash of its channels, job
-- options, batch settings and startFrom). The newest definition is the one first registered
-- last; its options are in force (consumers.definition). A superseded definition that registers
-- again (an old replica restarting mid-deploy) does not put its options back, unless no worker
-- has run the newer one for a while (a rollback): see src/db/registration.ts.
CREATE TABLE @schema@.consumer_definitions (
  consumer_id text NOT NULL REFERENCES @schema@.consumers (id) ON DELETE CASCADE,
  fingerprint text NOT NULL,
  channels text[] NOT NULL,
  job_options jsonb NOT NULL,
  batch jsonb,
  -- What the definition says beyond job options (ordered, concurrency, timeout...): shown by
  -- `consumers list`, part of the fingerprint.
  settings jsonb NOT NULL DEFAULT '{}',
  first_registered_at timestamptz NOT NULL DEFAULT clock_timestamp(),
  -- Registration or heartbeat of a worker running this definition.
  last_seen_at timestamptz NOT NULL DEFAULT clock_timestamp(),
  last_seen_worker text,
  PRIMARY KEY (consumer_id, fingerprint)
);

-- The fingerprint whose options consumers.job_options/batch hold (NULL: registered before 0008;
-- the next registration sets it).
ALTER TABLE @schema@.consumers ADD COLUMN definition text;

-- Set by `consumers remove <id>`: the consumer has no subscriptions, its owed rows no longer
-- hold up cleanup, and definitions registered before this time do not bring it back.
ALTER TABLE @schema@.consumers ADD COLUMN retired_at timestamptz;

-- Subscriptions removed by `consumers remove <id> --channels ...`. A definition registered before
-- the removal does not subscribe the channel again (an old replica restarting); one first
-- registered after it does (the user deployed a version that lists it again).
CREATE TABLE @schema@.removed_subscriptions (
  consumer_id text NOT NULL REFERENCES @schema@.consumers (id) ON DELETE CASCADE,
  channel text NOT NULL,
  removed_at timestamptz NOT NULL DEFAULT clock_timestamp(),
  PRIMARY KEY (consumer_id, channel)
);

-- 'skipped': a dead letter given up by `pgq-bridge consumers skip`. Final like 'completed' (never
-- replayed, no longer holds up cleanup or an ordering key), but recorded as not handled.
-- NOT VALID skips re-reading the whole ledger under this migration's lock: every existing row
-- passed the stricter check it replaces.
ALTER TABLE @schema@.deliveries DROP CONSTRAINT deliveries_status_check;
ALTER TABLE @schema@.deliveries ADD CONSTRAINT deliveries_status_check
  CHECK (status IN ('completed', 'failed', 'skipped')) NOT VALID;
