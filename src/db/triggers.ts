import { createHash } from 'node:crypto';
import pg from 'pg';
import { quoteIdent } from '../identifiers.js';
import type { Queryable } from './store.js';

/** A table name as written by a user: `users`, `public.users`, `"Sales"."Order Items"`. */
export interface QualifiedName {
  /** The schema, or null when the name was not qualified (Postgres' search_path decides). */
  schema: string | null;
  name: string;
}

/** SQLSTATE parse_ident() raises for text that is no identifier. */
const INVALID_PARAMETER_VALUE = '22023';

/**
 * Postgres' reading of a dotted name (`parse_ident()`: quoting, case folding), or null when the
 * text is no identifier.
 */
export async function identifierParts(db: Queryable, text: string): Promise<string[] | null> {
  try {
    const res = await db.query<{ parts: string[] }>(`SELECT parse_ident($1) AS parts`, [text]);
    return res.rows[0].parts;
  } catch (error) {
    if ((error as { code?: unknown }).code === INVALID_PARAMETER_VALUE) return null;
    throw error;
  }
}

/** Row events a data-change trigger can fire on. */
export type TriggerEvent = 'insert' | 'update' | 'delete';

/** Every event, in the order triggers are created and listed. */
export const TRIGGER_EVENTS: readonly TriggerEvent[] = ['insert', 'update', 'delete'];

/** A table found in the catalog. */
export interface ResolvedTable {
  oid: number;
  schema: string;
  name: string;
  /** Primary key columns in key order ([] when the table has none). */
  primaryKey: string[];
}

/** What one `triggers add` installs on a table. */
export interface TriggerSpec {
  channel: string;
  events: readonly TriggerEvent[];
  /** UPDATE fires only when one of these columns changed. */
  columns?: readonly string[];
  /** Extra `WHEN (...)` condition (SQL), for every event. */
  when?: string;
}

/** One CREATE TRIGGER statement of a plan. */
export interface PlannedTrigger {
  name: string;
  event: TriggerEvent;
  sql: string;
}

/** A `notify_data_change` trigger found in `pg_trigger`. */
export interface InstalledTrigger {
  /** The table, quoted where needed: `public.users`, `"Sales"."Order Items"`. */
  table: string;
  tableSchema: string;
  tableName: string;
  /** The trigger's name. */
  trigger: string;
  /** Channel the trigger notifies on (its first argument, default `data_change`). */
  channel: string;
  events: ('INSERT' | 'UPDATE' | 'DELETE' | 'TRUNCATE')[];
  /** Primary key columns passed to the trigger (its further arguments). */
  keyColumns: string[];
  /** The trigger's WHEN condition as Postgres prints it, or null. */
  condition: string | null;
  enabled: boolean;
}

/** pg_trigger.tgtype bits (src/include/catalog/pg_trigger.h). */
const TGTYPE = { row: 1, before: 2, insert: 4, delete: 8, update: 16, truncate: 32, instead: 64 };

const MAX_NAME_BYTES = 63;

/** `SELECT`-ready quoted `schema.table`. */
export function qualifiedTable(schema: string, name: string): string {
  return `${quoteIdent(schema)}.${quoteIdent(name)}`;
}

/**
 * The name of the trigger `triggers add` creates for `event`: `pgq_bridge_insert` for the default
 * schema, `pgq_bridge_<schema>_insert` for another one, so two pgq-bridge schemas never clash on
 * one table. Names are found again through the trigger function, never by name.
 */
export function triggerName(pgqSchema: string, event: TriggerEvent): string {
  const base = pgqSchema === 'pgq_bridge' ? 'pgq_bridge' : `pgq_bridge_${pgqSchema}`;
  const name = `${base}_${event}`;
  if (Buffer.byteLength(name) <= MAX_NAME_BYTES) return name;
  // Postgres would truncate silently; keep names distinct per schema with a short hash instead.
  const hash = createHash('sha256').update(pgqSchema).digest('hex').slice(0, 10);
  return `pgq_bridge_${hash}_${event}`;
}

/** The `WHEN (...)` condition of one event's trigger, or null. */
export function conditionFor(event: TriggerEvent, spec: TriggerSpec): string | null {
  const parts: string[] = [];
  if (event === 'update' && spec.columns && spec.columns.length > 0) {
    // Not `UPDATE OF col`: that fires whenever col is in the SET list, even with the same value.
    parts.push(
      spec.columns
        .map((c) => `OLD.${quoteIdent(c)} IS DISTINCT FROM NEW.${quoteIdent(c)}`)
        .join(' OR '),
    );
  }
  if (spec.when !== undefined && spec.when.trim() !== '') parts.push(spec.when.trim());
  if (parts.length === 0) return null;
  return parts.length === 1 ? parts[0] : parts.map((p) => `(${p})`).join(' AND ');
}

/**
 * The CREATE TRIGGER statements for a table: one trigger per event, because a WHEN condition that
 * reads OLD cannot apply to INSERT (nor NEW to DELETE). Every identifier is quoted and every
 * argument is a literal; only `spec.when` is SQL, and Postgres checks it.
 */
export function planTriggers(
  pgqSchema: string,
  table: ResolvedTable,
  spec: TriggerSpec,
): PlannedTrigger[] {
  const args = [spec.channel, ...table.primaryKey].map((a) => pg.escapeLiteral(a)).join(', ');
  const fn = `${quoteIdent(pgqSchema)}.notify_data_change(${args})`;
  return TRIGGER_EVENTS.filter((e) => spec.events.includes(e)).map((event) => {
    const name = triggerName(pgqSchema, event);
    const condition = conditionFor(event, spec);
    const sql =
      `CREATE TRIGGER ${quoteIdent(name)} AFTER ${event.toUpperCase()} ON ` +
      `${qualifiedTable(table.schema, table.name)} FOR EACH ROW` +
      (condition === null ? '' : ` WHEN (${condition})`) +
      ` EXECUTE FUNCTION ${fn}`;
    return { name, event, sql };
  });
}

/** `DROP TRIGGER` for an installed trigger. */
export function dropTriggerSql(trigger: InstalledTrigger): string {
  return `DROP TRIGGER IF EXISTS ${quoteIdent(trigger.trigger)} ON ${qualifiedTable(
    trigger.tableSchema,
    trigger.tableName,
  )}`;
}

/** The regprocedure text of the trigger function of a pgq-bridge schema. */
function functionSignature(pgqSchema: string): string {
  return `${quoteIdent(pgqSchema)}.notify_data_change()`;
}

/** Whether `<schema>.notify_data_change()` is installed (migration 0002). */
export async function triggerFunctionExists(db: Queryable, pgqSchema: string): Promise<boolean> {
  const res = await db.query<{ fn: string | null }>(`SELECT to_regprocedure($1)::text AS fn`, [
    functionSignature(pgqSchema),
  ]);
  return res.rows[0]?.fn != null;
}

/**
 * Inside a transaction that will be rolled back: a do-nothing `<schema>.notify_data_change()`
 * (and its schema), so that `triggers add --print-sql` can have Postgres check the triggers it
 * prints before pgq-bridge is installed.
 */
export async function createStandIn(db: Queryable, pgqSchema: string): Promise<void> {
  await db.query(`CREATE SCHEMA IF NOT EXISTS ${quoteIdent(pgqSchema)}`);
  await db.query(
    `CREATE FUNCTION ${functionSignature(pgqSchema)} RETURNS trigger LANGUAGE plpgsql
       AS $fn$ BEGIN RETURN NULL; END $fn$`,
  );
}

/**
 * Finds a table by a parsed name (an unqualified one through the search_path, as Postgres would)
 * with its primary key columns; null when there is no such table.
 */
export async function resolveTable(
  db: Queryable,
  table: QualifiedName,
): Promise<(ResolvedTable & { kind: string }) | null> {
  const text =
    table.schema === null ? quoteIdent(table.name) : qualifiedTable(table.schema, table.name);
  const res = await db.query<{
    oid: string;
    schema: string;
    name: string;
    kind: string;
    primary_key: string[];
  }>(
    `SELECT c.oid::int8 AS oid, n.nspname AS schema, c.relname AS name, c.relkind::text AS kind,
            ARRAY(SELECT a.attname::text
                    FROM pg_index i
                    CROSS JOIN LATERAL unnest(i.indkey::int2[]) WITH ORDINALITY AS k(attnum, ord)
                    JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
                   WHERE i.indrelid = c.oid AND i.indisprimary
                   ORDER BY k.ord) AS primary_key
       FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
      WHERE c.oid = to_regclass($1)`,
    [text],
  );
  const row = res.rows[0];
  if (!row) return null;
  return {
    oid: Number(row.oid),
    schema: row.schema,
    name: row.name,
    kind: row.kind,
    primaryKey: row.primary_key,
  };
}

/**
 * Takes the lock CREATE TRIGGER needs up front, so two `triggers add` on one table run one after
 * the other (each sees the other's triggers) instead of failing on a duplicate name.
 */
export async function lockTableForTriggers(db: Queryable, table: ResolvedTable): Promise<void> {
  await db.query(
    `LOCK TABLE ${qualifiedTable(table.schema, table.name)} IN SHARE ROW EXCLUSIVE MODE`,
  );
}

/** Runs one DDL statement with the extended protocol, which refuses a second statement. */
export async function runSingleStatement(db: Queryable, sql: string): Promise<void> {
  await db.query({ text: sql, queryMode: 'extended' } as pg.QueryConfig);
}

function eventsOf(tgtype: number): InstalledTrigger['events'] {
  const events: InstalledTrigger['events'] = [];
  if (tgtype & TGTYPE.insert) events.push('INSERT');
  if (tgtype & TGTYPE.update) events.push('UPDATE');
  if (tgtype & TGTYPE.delete) events.push('DELETE');
  if (tgtype & TGTYPE.truncate) events.push('TRUNCATE');
  return events;
}

/** The WHEN condition out of `pg_get_triggerdef()` (for display only). */
function conditionOf(definition: string): string | null {
  const match = / WHEN \((.*?)\) EXECUTE (?:FUNCTION|PROCEDURE) /s.exec(definition);
  return match ? match[1] : null;
}

/**
 * Every trigger that calls `<pgqSchema>.notify_data_change()`, read from `pg_trigger` (the catalog
 * is the only record: hand-written triggers show up too). Partition clones are left out: they
 * follow their parent's trigger. `tableOid` restricts the list to one table.
 */
export async function listInstalledTriggers(
  db: Queryable,
  pgqSchema: string,
  tableOid?: number,
): Promise<InstalledTrigger[]> {
  const res = await db.query<{
    trigger: string;
    table_schema: string;
    table_name: string;
    table: string;
    tgtype: number;
    tgnargs: number;
    tgargs: Buffer;
    tgenabled: string;
    definition: string;
  }>(
    `SELECT t.tgname AS trigger, n.nspname AS table_schema, c.relname AS table_name,
            format('%I.%I', n.nspname, c.relname) AS table, t.tgtype::int AS tgtype, t.tgnargs::int AS tgnargs,
            t.tgargs, t.tgenabled::text AS tgenabled, pg_get_triggerdef(t.oid) AS definition
       FROM pg_trigger t
       JOIN pg_class c ON c.oid = t.tgrelid
       JOIN pg_namespace n ON n.oid = c.relnamespace
      WHERE t.tgfoid = to_regprocedure($1) AND t.tgparentid = 0
        AND ($2::oid IS NULL OR t.tgrelid = $2::oid)
      ORDER BY n.nspname, c.relname, t.tgname`,
    [functionSignature(pgqSchema), tableOid ?? null],
  );
  return res.rows.map((row) => {
    // tgargs: each argument followed by a NUL byte.
    const args = row.tgargs.toString('utf8').split('\0').slice(0, row.tgnargs);
    return {
      table: row.table,
      tableSchema: row.table_schema,
      tableName: row.table_name,
      trigger: row.trigger,
      channel: args[0] ?? 'data_change',
      events: eventsOf(row.tgtype),
      keyColumns: args.slice(1),
      condition: conditionOf(row.definition),
      enabled: row.tgenabled !== 'D',
    };
  });
}
