-- pgq-bridge 0010: the writer's trace context (W3C traceparent/tracestate) on every notification
-- (docs/tracing.md).
--
-- * Two nullable columns. Rows written without a trace store two NULLs: no bytes beyond the
--   null bitmap, no index.
-- * SQL writers set the context for their transaction like pgq_bridge.context:
--     SET LOCAL pgq_bridge.traceparent = '00-<trace id>-<span id>-01';
--     SET LOCAL pgq_bridge.tracestate = 'vendor=value';   -- optional
--   notify/2, notify/3 and notify_data_change() read both settings. They are stored as given:
--   the consumer parses them and ignores a malformed one (a bad header must never refuse the
--   user's write).
-- * notify(channel, payload, key, traceparent, tracestate): the TypeScript notify() passes the
--   active span's context as arguments (one round trip, nothing left set in the caller's
--   transaction).
--
-- Every writer is redefined here and carries all earlier changes: 0006 (the cheap notify/2: no
-- CHECK, the lease in the INSERT's RETURNING) and 0009 (ordering keys, the key's advisory lock,
-- trigger keys). The settings are read inline in the INSERT, not in DECLARE: a plpgsql assignment
-- is an expression evaluation of its own; notify/2's cost is measured in docs/tracing.md.
-- A migration that later redefines a writer must carry the trace columns too.

ALTER TABLE @schema@.notifications ADD COLUMN traceparent text, ADD COLUMN tracestate text;

-- Same contract as 0006, plus the trace context from the settings.
CREATE OR REPLACE FUNCTION @schema@.notify(channel text, payload jsonb) RETURNS bigint
LANGUAGE plpgsql AS $fn$
#variable_conflict use_variable
DECLARE
  new_id bigint;
  lease_live boolean;
BEGIN
  IF channel IS NULL OR octet_length(channel) NOT BETWEEN 1 AND 63
     OR channel !~ '^[A-Za-z0-9_.:-]+$' THEN
    RAISE EXCEPTION 'pgq-bridge: invalid channel name %: use 1-63 characters of A-Z a-z 0-9 _ . : -',
      coalesce(quote_literal(channel), 'NULL')
      USING ERRCODE = 'invalid_parameter_value';
  END IF;
  -- clock_timestamp(), not now(): the lease is compared with the real time of the call, not the
  -- start of the caller's transaction.
  INSERT INTO @schema@.notifications (channel, payload, context, traceparent, tracestate)
  VALUES (channel, coalesce(payload, 'null'::jsonb), @schema@.current_context(),
          nullif(current_setting('pgq_bridge.traceparent', true), ''),
          nullif(current_setting('pgq_bridge.tracestate', true), ''))
  RETURNING id, (SELECT awake_until > clock_timestamp() FROM @schema@.listener_lease)
  INTO new_id, lease_live;
  IF lease_live IS NOT TRUE THEN
    PERFORM pg_notify(@schema_literal@, '');
  END IF;
  RETURN new_id;
END
$fn$;

-- Same contract as 0009, plus the trace context from the settings.
CREATE OR REPLACE FUNCTION @schema@.notify(channel text, payload jsonb, key text) RETURNS bigint
LANGUAGE plpgsql AS $fn$
#variable_conflict use_variable
DECLARE
  new_id bigint;
  lease_live boolean;
BEGIN
  IF channel IS NULL OR octet_length(channel) NOT BETWEEN 1 AND 63
     OR channel !~ '^[A-Za-z0-9_.:-]+$' THEN
    RAISE EXCEPTION 'pgq-bridge: invalid channel name %: use 1-63 characters of A-Z a-z 0-9 _ . : -',
      coalesce(quote_literal(channel), 'NULL')
      USING ERRCODE = 'invalid_parameter_value';
  END IF;
  IF key IS NOT NULL THEN
    IF octet_length(key) > 512 THEN
      RAISE EXCEPTION 'pgq-bridge: ordering key too long (% bytes): keys may have at most 512 bytes',
        octet_length(key)
        USING ERRCODE = 'invalid_parameter_value';
    END IF;
    -- Held to the end of the transaction: a later writer of this key takes its id after we commit.
    PERFORM pg_advisory_xact_lock(hashtextextended('pgq_bridge.key:' || @schema_literal@ || ':' || key, 0));
  END IF;
  INSERT INTO @schema@.notifications (channel, payload, context, key, traceparent, tracestate)
  VALUES (channel, coalesce(payload, 'null'::jsonb), @schema@.current_context(), key,
          nullif(current_setting('pgq_bridge.traceparent', true), ''),
          nullif(current_setting('pgq_bridge.tracestate', true), ''))
  RETURNING id, (SELECT awake_until > clock_timestamp() FROM @schema@.listener_lease)
  INTO new_id, lease_live;
  IF lease_live IS NOT TRUE THEN
    PERFORM pg_notify(@schema_literal@, '');
  END IF;
  RETURN new_id;
END
$fn$;

-- notify/3 with the trace context given by the caller (the TypeScript notify()); NULLs store none.
CREATE FUNCTION @schema@.notify(
  channel text, payload jsonb, key text, traceparent text, tracestate text
) RETURNS bigint
LANGUAGE plpgsql AS $fn$
#variable_conflict use_variable
DECLARE
  new_id bigint;
  lease_live boolean;
BEGIN
  IF channel IS NULL OR octet_length(channel) NOT BETWEEN 1 AND 63
     OR channel !~ '^[A-Za-z0-9_.:-]+$' THEN
    RAISE EXCEPTION 'pgq-bridge: invalid channel name %: use 1-63 characters of A-Z a-z 0-9 _ . : -',
      coalesce(quote_literal(channel), 'NULL')
      USING ERRCODE = 'invalid_parameter_value';
  END IF;
  IF key IS NOT NULL THEN
    IF octet_length(key) > 512 THEN
      RAISE EXCEPTION 'pgq-bridge: ordering key too long (% bytes): keys may have at most 512 bytes',
        octet_length(key)
        USING ERRCODE = 'invalid_parameter_value';
    END IF;
    -- Held to the end of the transaction: a later writer of this key takes its id after we commit.
    PERFORM pg_advisory_xact_lock(hashtextextended('pgq_bridge.key:' || @schema_literal@ || ':' || key, 0));
  END IF;
  INSERT INTO @schema@.notifications (channel, payload, context, key, traceparent, tracestate)
  VALUES (channel, coalesce(payload, 'null'::jsonb), @schema@.current_context(), key,
          traceparent, tracestate)
  RETURNING id, (SELECT awake_until > clock_timestamp() FROM @schema@.listener_lease)
  INTO new_id, lease_live;
  IF lease_live IS NOT TRUE THEN
    PERFORM pg_notify(@schema_literal@, '');
  END IF;
  RETURN new_id;
END
$fn$;

-- Same contract as 0009, plus the trace context from the settings.
CREATE OR REPLACE FUNCTION @schema@.notify_data_change() RETURNS trigger
LANGUAGE plpgsql AS $fn$
DECLARE
  target_channel text := coalesce(TG_ARGV[0], 'data_change');
  old_row jsonb;
  new_row jsonb;
  change jsonb;
  key_columns text[];
  key_value jsonb;
  row_key text;
  new_id bigint;
  lease_live boolean;
BEGIN
  -- A BEFORE trigger returning NULL would silently cancel the user's write: refuse loudly instead.
  IF TG_WHEN <> 'AFTER' OR TG_LEVEL <> 'ROW' THEN
    RAISE EXCEPTION 'pgq-bridge: notify_data_change() must be an AFTER ... FOR EACH ROW trigger (trigger % on %.%)',
      TG_NAME, TG_TABLE_SCHEMA, TG_TABLE_NAME
      USING ERRCODE = 'object_not_in_prerequisite_state';
  END IF;
  IF target_channel IS NULL OR octet_length(target_channel) NOT BETWEEN 1 AND 63
     OR target_channel !~ '^[A-Za-z0-9_.:-]+$' THEN
    RAISE EXCEPTION 'pgq-bridge: invalid channel name %: use 1-63 characters of A-Z a-z 0-9 _ . : -',
      quote_literal(target_channel)
      USING ERRCODE = 'invalid_parameter_value';
  END IF;
  IF TG_OP IN ('UPDATE', 'DELETE') THEN
    old_row := to_jsonb(OLD);
  END IF;
  IF TG_OP IN ('INSERT', 'UPDATE') THEN
    new_row := to_jsonb(NEW);
  END IF;
  -- jsonb_build_object keeps SQL NULLs as JSON null, so "old"/"new"/"context" are always present.
  change := jsonb_build_object(
    'schema', TG_TABLE_SCHEMA,
    'table', TG_TABLE_NAME,
    'action', TG_OP,
    'old', old_row,
    'new', new_row,
    'context', @schema@.current_context()
  );
  IF TG_NARGS > 1 THEN
    key_columns := TG_ARGV[1:TG_NARGS - 1];
    change := change || jsonb_build_object('primary_key', to_jsonb(key_columns));
  ELSE
    SELECT array_agg(a.attname::text ORDER BY k.ord) INTO key_columns
      FROM pg_index i
      CROSS JOIN LATERAL unnest(i.indkey::int2[]) WITH ORDINALITY AS k(attnum, ord)
      JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
     WHERE i.indrelid = TG_RELID AND i.indisprimary;
  END IF;
  -- The key: the new row's primary key (the old row's for a DELETE), one column as its JSON
  -- value (public.users:7, public.users:"u-7"), several as a JSON array in key order
  -- (public.line_items:[12, "b"]), exactly as jsonb prints them.
  IF cardinality(key_columns) = 1 THEN
    key_value := coalesce(new_row, old_row) -> key_columns[1];
  ELSIF cardinality(key_columns) > 1 THEN
    SELECT jsonb_agg(coalesce(new_row, old_row) -> c ORDER BY ord) INTO key_value
      FROM unnest(key_columns) WITH ORDINALITY AS u(c, ord);
  END IF;
  IF key_value IS NOT NULL THEN
    row_key := TG_TABLE_SCHEMA || '.' || TG_TABLE_NAME || ':' || key_value::text;
    -- A very long primary key must not refuse the user's write: its md5 names the row as well.
    IF octet_length(row_key) > 512 THEN
      row_key := TG_TABLE_SCHEMA || '.' || TG_TABLE_NAME || ':md5:' || md5(key_value::text);
    END IF;
  END IF;
  -- The row written here is the notification: no NOTIFY size limit applies to the change. No
  -- advisory lock (see the top of this file): the changed row's lock orders its changes.
  INSERT INTO @schema@.notifications (channel, payload, context, key, traceparent, tracestate)
  VALUES (target_channel, change, @schema@.current_context(), row_key,
          nullif(current_setting('pgq_bridge.traceparent', true), ''),
          nullif(current_setting('pgq_bridge.tracestate', true), ''))
  RETURNING id, (SELECT awake_until > clock_timestamp() FROM @schema@.listener_lease)
  INTO new_id, lease_live;
  IF lease_live IS NOT TRUE THEN
    PERFORM pg_notify(@schema_literal@, '');
  END IF;
  RETURN NULL;
END
$fn$;
