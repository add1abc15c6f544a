import pg from 'pg';
import {
  TRIGGER_EVENTS,
  dropTriggerSql,
  listInstalledTriggers,
  lockTableForTriggers,
  planTriggers,
  qualifiedTable,
  resolveTable,
  runSingleStatement,
  createStandIn,
  triggerFunctionExists,
  triggerName,
  type InstalledTrigger,
  type ResolvedTable,
  type TriggerEvent,
  type TriggerSpec,
} from '../db/triggers.js';
import type { Queryable } from '../db/store.js';
import { PgqError, UsageError } from '../errors.js';
import { assertChannel, quoteIdent } from '../identifiers.js';
import { parseQualifiedName, type QualifiedName } from './table-name.js';

export type { InstalledTrigger, TriggerEvent } from '../db/triggers.js';

/** Channel of data-change triggers installed without `channel` (SPEC.md). */
export const DEFAULT_CHANGE_CHANNEL = 'data_change';

/** Options shared by the trigger functions. */
export interface TriggerTargetOptions {
  /** Schema pgq-bridge is installed in (default `pgq_bridge`). */
  schema?: string;
}

/** Options of {@link addTrigger} and {@link triggerSql}. */
export interface AddTriggerOptions extends TriggerTargetOptions {
  /** Channel of the notifications (default `data_change`). */
  channel?: string;
  /** Events that fire (default all three). */
  events?: readonly TriggerEvent[];
  /** UPDATE fires only when one of these columns changed (exact column names). */
  columns?: readonly string[];
  /** Extra condition, SQL for the trigger's `WHEN (...)`, e.g. `NEW.status IS DISTINCT FROM OLD.status`. */
  when?: string;
}

/**
 * A table: `'users'`, `'public.users'`, `'Sales."Order Items"'` (parsed with Postgres' rules:
 * unquoted names fold to lower case), or an exact `{ schema, name }`.
 */
export type TableRef = string | QualifiedName;

async function toQualifiedName(db: Queryable, table: TableRef): Promise<QualifiedName> {
  if (typeof table === 'string') return parseQualifiedName(db, table);
  if (!table || typeof table.name !== 'string' || table.name === '') {
    throw new UsageError('table must be a name or { schema, name }', 'PGQ_INVALID_NAME');
  }
  return { schema: table.schema ?? null, name: table.name };
}

function describeName(table: QualifiedName): string {
  return table.schema === null ? quoteIdent(table.name) : qualifiedTable(table.schema, table.name);
}

/** Checks the options and fills in the defaults. */
export function triggerSpec(options: AddTriggerOptions): TriggerSpec {
  const channel = options.channel ?? DEFAULT_CHANGE_CHANNEL;
  assertChannel(channel);
  const events = [...new Set(options.events ?? TRIGGER_EVENTS)];
  if (events.length === 0)
    throw new UsageError('events: name at least one of insert, update, delete');
  for (const event of events) {
    if (!TRIGGER_EVENTS.includes(event)) {
      throw new UsageError(
        `events: unknown event ${JSON.stringify(event)}; use insert, update, delete`,
      );
    }
  }
  const columns = options.columns ? [...new Set(options.columns)] : undefined;
  if (columns) {
    if (columns.length === 0 || columns.some((c) => typeof c !== 'string' || c === '')) {
      throw new UsageError('columns: give one or more column names');
    }
    if (!events.includes('update')) {
      throw new UsageError(
        'columns: only UPDATE triggers look at columns, and events has no update',
      );
    }
  }
  if (
    options.when !== undefined &&
    (typeof options.when !== 'string' || options.when.trim() === '')
  ) {
    throw new UsageError(
      'when: give an SQL condition, e.g. "NEW.status IS DISTINCT FROM OLD.status"',
    );
  }
  return { channel, events, columns, when: options.when };
}

/** Runs `fn` on one connection: a Pool lends one for the call; a Client is used as is. */
async function onOneConnection<T>(
  db: Queryable,
  fn: (client: Queryable) => Promise<T>,
): Promise<T> {
  if (!(db instanceof pg.Pool)) return fn(db);
  const client = await db.connect();
  try {
    return await fn(client);
  } finally {
    client.release();
  }
}

async function inTransaction<T>(db: Queryable, fn: (client: Queryable) => Promise<T>): Promise<T> {
  return onOneConnection(db, async (client) => {
    await client.query('BEGIN');
    try {
      const result = await fn(client);
      await client.query('COMMIT');
      return result;
    } catch (error) {
      await client.query('ROLLBACK').catch(() => undefined);
      throw error;
    }
  });
}

async function findTable(db: Queryable, table: TableRef): Promise<ResolvedTable> {
  const name = await toQualifiedName(db, table);
  const found = await resolveTable(db, name);
  if (!found) {
    throw new PgqError('PGQ_TABLE_NOT_FOUND', `table ${describeName(name)} does not exist`);
  }
  if (!['r', 'p', 'f'].includes(found.kind)) {
    throw new PgqError(
      'PGQ_UNSUPPORTED_TABLE',
      `${qualifiedTable(found.schema, found.name)} is not a table (row triggers need a table)`,
    );
  }
  return found;
}

async function assertMigrated(db: Queryable, schema: string): Promise<void> {
  if (!(await triggerFunctionExists(db, schema))) {
    throw new PgqError(
      'PGQ_NOT_MIGRATED',
      `${quoteIdent(schema)}.notify_data_change() is not installed: run \`pgq-bridge migrate\` first`,
    );
  }
}

/** A Postgres error caused by the user's condition or column names becomes a usage error. */
function explainCreateError(error: unknown, table: ResolvedTable): unknown {
  const code = (error as { code?: unknown }).code;
  if (typeof code !== 'string' || !code.startsWith('42') || code === '42501') return error;
  let message = `cannot create the trigger on ${qualifiedTable(table.schema, table.name)}: ${
    (error as Error).message
  }`;
  if (/WHEN condition cannot reference (OLD|NEW)/i.test(message)) {
    message += ' (the condition applies to every event: limit them, e.g. --events update)';
  }
  return new UsageError(message, 'PGQ_INVALID_TRIGGER');
}

/**
 * Replaces the table's `notify_data_change` triggers of this schema by the planned ones, inside
 * the caller's transaction, and checks what Postgres made of them: the checks `triggers add` and
 * `triggers add --print-sql` share, so the printed SQL is only ever SQL that `add` accepts.
 */
async function replaceTriggers(
  client: Queryable,
  schema: string,
  target: ResolvedTable,
  spec: TriggerSpec,
): Promise<InstalledTrigger[]> {
  await lockTableForTriggers(client, target);
  for (const existing of await listInstalledTriggers(client, schema, target.oid)) {
    await client.query(dropTriggerSql(existing));
  }
  const planned = planTriggers(schema, target, spec);
  for (const trigger of planned) {
    try {
      await runSingleStatement(client, trigger.sql);
    } catch (error) {
      throw explainCreateError(error, target);
    }
  }
  const installed = await listInstalledTriggers(client, schema, target.oid);
  // A condition is free SQL: make sure it could not turn a trigger into a call of something else.
  const names = installed.map((t) => t.trigger).sort();
  const expected = planned.map((t) => t.name).sort();
  if (names.join('\0') !== expected.join('\0')) {
    throw new UsageError(
      `--when changed the trigger's shape (expected triggers ${expected.join(', ')}); refusing it`,
      'PGQ_INVALID_TRIGGER',
    );
  }
  return installed;
}

/**
 * Installs `AFTER ... FOR EACH ROW` triggers that call `<schema>.notify_data_change()` on a table
 * (the `triggers add` command). Replaces any `notify_data_change` trigger of this schema already
 * on the table, so running it again with other options updates it. Runs in its own transaction:
 * pass a Pool or a client that is not inside a transaction.
 *
 * @returns the triggers now installed on the table
 * @throws UsageError for bad options or a condition Postgres refuses; PgqError
 *   `PGQ_TABLE_NOT_FOUND`, `PGQ_NOT_MIGRATED`
 */
export async function addTrigger(
  db: Queryable,
  table: TableRef,
  options: AddTriggerOptions = {},
): Promise<InstalledTrigger[]> {
  const schema = options.schema ?? 'pgq_bridge';
  const spec = triggerSpec(options);
  return inTransaction(db, async (client) => {
    await assertMigrated(client, schema);
    const target = await findTable(client, table);
    return replaceTriggers(client, schema, target, spec);
  });
}

/**
 * The SQL {@link addTrigger} would run, for users who keep triggers in their own migrations:
 * drops of the trigger names pgq-bridge uses, then the CREATE TRIGGER statements. Reads the
 * table's primary key from the database, and checks the triggers exactly as `addTrigger` does,
 * by creating them in a transaction that is always rolled back (briefly locking the table as
 * `addTrigger` would): a condition `addTrigger` refuses is refused here too. When pgq-bridge is
 * not installed yet, a stand-in `notify_data_change()` is created in that transaction, so the
 * SQL can be printed before `migrate` runs. Pass a Pool or a client outside a transaction.
 *
 * @throws the errors of {@link addTrigger} (but never `PGQ_NOT_MIGRATED`)
 */
export async function triggerSql(
  db: Queryable,
  table: TableRef,
  options: AddTriggerOptions = {},
): Promise<string> {
  const schema = options.schema ?? 'pgq_bridge';
  const spec = triggerSpec(options);
  return onOneConnection(db, async (client) => {
    await client.query('BEGIN');
    try {
      if (!(await triggerFunctionExists(client, schema))) await createStandIn(client, schema);
      const target = await findTable(client, table);
      await replaceTriggers(client, schema, target, spec);
      const where = qualifiedTable(target.schema, target.name);
      const lines = [`-- pgq-bridge: data-change triggers on ${where} (channel ${spec.channel})`];
      for (const event of TRIGGER_EVENTS) {
        lines.push(`DROP TRIGGER IF EXISTS ${quoteIdent(triggerName(schema, event))} ON ${where};`);
      }
      for (const trigger of planTriggers(schema, target, spec)) lines.push(`${trigger.sql};`);
      return lines.join('\n') + '\n';
    } finally {
      await client.query('ROLLBACK').catch(() => undefined);
    }
  });
}

/**
 * Drops every trigger on the table that calls `<schema>.notify_data_change()` (the
 * `triggers remove` command). Removing from a table that has none is not an error.
 *
 * @returns the triggers that were dropped
 */
export async function removeTrigger(
  db: Queryable,
  table: TableRef,
  options: TriggerTargetOptions = {},
): Promise<InstalledTrigger[]> {
  const schema = options.schema ?? 'pgq_bridge';
  return inTransaction(db, async (client) => {
    const target = await findTable(client, table);
    if (!(await triggerFunctionExists(client, schema))) return [];
    await lockTableForTriggers(client, target);
    const installed = await listInstalledTriggers(client, schema, target.oid);
    for (const trigger of installed) await client.query(dropTriggerSql(trigger));
    return installed;
  });
}

/**
 * Every trigger, on any table, that calls `<schema>.notify_data_change()` (the `triggers list`
 * command), read from the `pg_trigger` catalog.
 */
export async function listTriggers(
  db: Queryable,
  options: TriggerTargetOptions = {},
): Promise<InstalledTrigger[]> {
  const schema = options.schema ?? 'pgq_bridge';
  if (!(await triggerFunctionExists(db, schema))) return [];
  return listInstalledTriggers(db, schema);
}
