-- pgq-bridge 0009: ordering keys (ordered consumers, docs/ordering.md).
--
-- A notification may carry a key; an ordered consumer handles the notifications of one key one at
-- a time, in id order. This migration makes id order equal commit order per key:
--
-- * notify(channel, payload, key) takes a transaction-scoped advisory lock on the key before the
--   row takes its id, so two transactions writing the same key serialize like two writers of one
--   row: the second gets its id only after the first committed (or rolled back). Different keys
--   never wait for each other (up to a 64-bit hash collision, which only makes two keys wait).
-- * Trigger payloads get the key <schema>.<table>:<primary key as JSON> and take no advisory
--   lock: the changed row's lock, held from the change to the commit, already orders them, and a
--   bulk UPDATE of 100,000 rows would otherwise hold 100,000 locks (the shared lock table holds
--   max_locks_per_transaction x max_connections, 6,400 by default).
--
-- The two-argument notify() is not redefined: its cost stays what 0006 measured. A later
-- migration that changes how a row is stored must redefine all three writers: notify/2, notify/3
-- and notify_data_change().

ALTER TABLE @schema@.notifications ADD COLUMN key text;

-- The ordering gate looks up "earlier unfinished notifications of this key": a partial index, so
-- rows without a key (the two-argument notify()) write no index entry.
CREATE INDEX notifications_key_idx ON @schema@.notifications (key, id) WHERE key IS NOT NULL;

-- How a consumer orders its deliveries: NULL (not ordered), 'block' or 'skip' (what a dead letter
-- does to the later notifications of its key). Written at registration; read by status and board.
ALTER TABLE @schema@.consumers ADD COLUMN ordered text
  CONSTRAINT consumers_ordered_check CHECK (ordered IN ('block', 'skip'));

CREATE FUNCTION @schema@.notify(channel text, payload jsonb, key text) RETURNS bigint
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
  INSERT INTO @schema@.notifications (channel, payload, context, key)
  VALUES (channel, coalesce(payload, 'null'::jsonb), @schema@.current_context(), key)
  RETURNING id, (SELECT awake_until > clock_timestamp() FROM @schema@.listener_lease)
  INTO new_id, lease_live;
  IF lease_live IS NOT TRUE THEN
    PERFORM pg_notify(@schema_literal@, '');
  END IF;
  RETURN new_id;
END
$fn$;

-- Same contract as 0002, plus the key. TG_ARGV[1..] (written by `triggers add`) name the primary
-- key columns; a trigger created by hand without them reads them from pg_index (a catalog lookup
-- per row). A table without a primary key gives no key (its changes are not ordered).
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
  INSERT INTO @schema@.notifications (channel, payload, context, key)
  VALUES (target_channel, change, @schema@.current_context(), row_key)
  RETURNING id, (SELECT awake_until > clock_timestamp() FROM @schema@.listener_lease)
  INTO new_id, lease_live;
  IF lease_live IS NOT TRUE THEN
    PERFORM pg_notify(@schema_literal@, '');
  END IF;
  RETURN NULL;
END
$fn$;
