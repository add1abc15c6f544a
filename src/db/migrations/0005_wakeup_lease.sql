-- pgq-bridge 0005: the wake-up lease, so that writers skip NOTIFY while a listener is busy anyway.
--
-- Why: a transaction that ran NOTIFY takes a cluster-wide lock at commit, which serializes every
-- such committer. On a 2-core machine, INSERT + pg_notify ran at about a third of a plain INSERT
-- (pgbench, 8 clients). A busy listener does not need the wake-up: it polls every few ms anyway.
--
-- How: an unfiltered listener (no --channels) that keeps finding rows sets awake_until a second or
-- so ahead (one autocommit UPDATE, refreshed when half of it is left) and, while the lease is live
-- plus a short grace, polls with a short adaptive delay instead of sleeping on NOTIFY. notify()
-- sends pg_notify only when no lease is live. When the listener finds nothing for a while it lets
-- the lease lapse, sweeps once more, and sleeps on NOTIFY again.
--
-- Why no row is lost: a writer that saw a live lease but committed after the listener went back to
-- sleep (a transaction open longer than the grace after the lease ended) has no wake-up; the
-- listener's safety poll (default 5 s) bridges it. Delayed, never lost.

CREATE TABLE @schema@.listener_lease (
  id boolean PRIMARY KEY DEFAULT true CONSTRAINT listener_lease_one_row CHECK (id),
  awake_until timestamptz NOT NULL DEFAULT '-infinity'
);
INSERT INTO @schema@.listener_lease DEFAULT VALUES;

-- Same contract as 0001's notify(); only the wake-up is conditional. clock_timestamp(), not now():
-- the lease is compared with the real time of the call, not the start of the caller's transaction.
CREATE OR REPLACE FUNCTION @schema@.notify(channel text, payload jsonb) RETURNS bigint
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
  IF NOT EXISTS (SELECT 1 FROM @schema@.listener_lease WHERE awake_until > clock_timestamp()) THEN
    PERFORM pg_notify(@schema_literal@, '');
  END IF;
  RETURN new_id;
END
$fn$;
