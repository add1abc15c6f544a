-- pgq-bridge 0001: notifications, consumers and their subscriptions, the delivery ledger, notify().
-- @schema@ is replaced by the quoted schema name, @schema_literal@ by it as a string literal.

CREATE TABLE @schema@.notifications (
  id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  channel text NOT NULL CONSTRAINT notifications_channel_check
    CHECK (channel ~ '^[A-Za-z0-9_.:-]{1,63}$'),
  payload jsonb NOT NULL,
  -- Who or what caused the notification (pgq_bridge.context of the writing transaction).
  context jsonb,
  created_at timestamptz NOT NULL DEFAULT now(),
  -- Set in the same transaction that enqueued the row's jobs; NULL means "not yet a job".
  bridged_at timestamptz
);

-- The listener's claim query reads only this small index: unbridged rows in id order.
CREATE INDEX notifications_unbridged_idx ON @schema@.notifications (id) WHERE bridged_at IS NULL;

CREATE TABLE @schema@.consumers (
  id text PRIMARY KEY CONSTRAINT consumers_id_check CHECK (id ~ '^[A-Za-z0-9_-]{1,64}$'),
  -- BullMQ job options the listener applies to this consumer's jobs (attempts, backoff, removeOn*).
  job_options jsonb NOT NULL DEFAULT '{}',
  -- Batch consumers: {"size": n, "maxWaitMs": ms}; NULL for one job per notification.
  batch jsonb,
  start_from text NOT NULL DEFAULT 'now' CONSTRAINT consumers_start_from_check
    CHECK (start_from IN ('beginning', 'now')),
  registered_at timestamptz NOT NULL DEFAULT now(),
  updated_at timestamptz NOT NULL DEFAULT now(),
  last_seen_at timestamptz,
  last_seen_worker text
);

-- One row per (consumer, channel). after_id: the consumer is owed notifications of the channel with
-- a greater id (0 = every stored one). Rows bridged before subscribed_at (both clock times, taken
-- under the subscriptions lock) never became jobs for it: that is what playback enqueues.
CREATE TABLE @schema@.subscriptions (
  consumer_id text NOT NULL REFERENCES @schema@.consumers (id) ON DELETE CASCADE,
  channel text NOT NULL CONSTRAINT subscriptions_channel_check
    CHECK (channel ~ '^[A-Za-z0-9_.:-]{1,63}$'),
  after_id bigint NOT NULL DEFAULT 0,
  subscribed_at timestamptz NOT NULL DEFAULT clock_timestamp(),
  PRIMARY KEY (consumer_id, channel)
);

-- The delivery ledger: the final outcome of each (consumer, notification).
CREATE TABLE @schema@.deliveries (
  consumer_id text NOT NULL,
  notification_id bigint NOT NULL,
  status text NOT NULL CONSTRAINT deliveries_status_check CHECK (status IN ('completed', 'failed')),
  attempts integer NOT NULL,
  last_error text,
  finished_at timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (consumer_id, notification_id)
);
CREATE INDEX deliveries_notification_idx ON @schema@.deliveries (notification_id);

-- The context of the current transaction (SET LOCAL pgq_bridge.context = '{...}'), or NULL.
CREATE FUNCTION @schema@.current_context() RETURNS jsonb
LANGUAGE sql STABLE AS $fn$
  SELECT nullif(current_setting('pgq_bridge.context', true), '')::jsonb
$fn$;

-- Stores a notification and wakes the listeners. The row is the notification; the NOTIFY is
-- only a wake-up with a constant payload, so Postgres folds repeated ones within a transaction.
CREATE FUNCTION @schema@.notify(channel text, payload jsonb) RETURNS bigint
LANGUAGE plpgsql AS $fn$
#variable_conflict use_variable
DECLARE
  new_id bigint;
BEGIN
  IF channel IS NULL OR channel !~ '^[A-Za-z0-9_.:-]{1,63}$' THEN
    RAISE EXCEPTION 'pgq-bridge: invalid channel name %: use 1-63 characters of A-Z a-z 0-9 _ . : -',
      coalesce(quote_literal(channel), 'NULL')
      USING ERRCODE = 'invalid_parameter_value';
  END IF;
  INSERT INTO @schema@.notifications (channel, payload, context)
  VALUES (channel, coalesce(payload, 'null'::jsonb), @schema@.current_context())
  RETURNING id INTO new_id;
  PERFORM pg_notify(@schema_literal@, '');
  RETURN new_id;
END
$fn$;
