-- pgq-bridge 0002: notify_data_change(), the row-change trigger function (`pgq-bridge triggers`).
-- @schema@ is replaced by the quoted schema name.
--
-- Use: CREATE TRIGGER ... AFTER INSERT OR UPDATE OR DELETE ON t FOR EACH ROW
--        EXECUTE FUNCTION @schema@.notify_data_change(['channel' [, 'key_col', ...]]);
-- TG_ARGV[0]: channel (default 'data_change'). TG_ARGV[1..]: the table's primary key columns,
-- written by `pgq-bridge triggers add` at install time so that no row pays for a catalog lookup;
-- when given, the payload also carries them as "primary_key" (handlers derive recordId from it).
CREATE FUNCTION @schema@.notify_data_change() RETURNS trigger
LANGUAGE plpgsql AS $fn$
DECLARE
  target_channel text := coalesce(TG_ARGV[0], 'data_change');
  old_row jsonb;
  new_row jsonb;
  change jsonb;
BEGIN
  -- A BEFORE trigger returning NULL would silently cancel the user's write: refuse loudly instead.
  IF TG_WHEN <> 'AFTER' OR TG_LEVEL <> 'ROW' THEN
    RAISE EXCEPTION 'pgq-bridge: notify_data_change() must be an AFTER ... FOR EACH ROW trigger (trigger % on %.%)',
      TG_NAME, TG_TABLE_SCHEMA, TG_TABLE_NAME
      USING ERRCODE = 'object_not_in_prerequisite_state';
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
    change := change || jsonb_build_object('primary_key', to_jsonb(TG_ARGV[1:TG_NARGS - 1]));
  END IF;
  -- The row written by notify() is the notification: no NOTIFY size limit applies to the change.
  PERFORM @schema@.notify(target_channel, change);
  RETURN NULL;
END
$fn$;
