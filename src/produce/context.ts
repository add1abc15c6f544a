import pg from 'pg';
import { readLocalContext, readLocalTrace, setLocalContext } from '../db/context.js';
import { currentTrace } from '../tracing.js';
import { PgqError } from '../errors.js';

/** Who or what caused a change: any JSON object, e.g. `{ userId: 42, requestId: 'r-1' }`. */
export type NotificationContext = Record<string, unknown>;

/** A connection that can hold a transaction (a Pool is accepted by {@link withContext} too). */
export type TransactionClient = pg.Client | pg.PoolClient;

function contextJson(context: unknown): string {
  if (context === null || typeof context !== 'object' || Array.isArray(context)) {
    throw new PgqError('PGQ_INVALID_CONTEXT', 'context must be a plain JSON object');
  }
  let json: string | undefined;
  try {
    json = JSON.stringify(context);
  } catch (error) {
    throw new PgqError(
      'PGQ_INVALID_CONTEXT',
      `context is not serializable to JSON: ${(error as Error).message}`,
    );
  }
  if (json === undefined || !json.startsWith('{')) {
    throw new PgqError('PGQ_INVALID_CONTEXT', 'context must be a plain JSON object');
  }
  return json;
}

/** 'T' inside a transaction block, 'E' inside a failed one, 'I' idle; null if pg cannot tell. */
function transactionStatus(client: TransactionClient): string | null {
  const getStatus = (client as { getTransactionStatus?: () => string | null }).getTransactionStatus;
  return typeof getStatus === 'function' ? (getStatus.call(client) ?? null) : null;
}

/** The caller's active trace context (undefined without `@opentelemetry/api` or a span). */
async function activeTrace(): Promise<Awaited<ReturnType<typeof currentTrace>>> {
  return currentTrace();
}

/**
 * Sets the context of the caller's current transaction (plain SQL:
 * `SET LOCAL pgq_bridge.context = '{...}'`): every notification and trigger payload written by
 * it from now on carries `context` (and, with `@opentelemetry/api` and an active span, its trace
 * context). Call it after `BEGIN`; it ends with the transaction.
 */
export async function setContext(
  client: TransactionClient,
  context: NotificationContext,
): Promise<void> {
  await setLocalContext(client, contextJson(context), await activeTrace());
}

/**
 * Runs `fn` in a transaction whose notifications and trigger payloads all carry `context`, so a
 * handler knows who or what caused them (`n.context`). With `@opentelemetry/api` and an active
 * span, they carry its trace context too (docs/tracing.md).
 *
 * - With a Pool, or a client outside a transaction: BEGIN, set the context, `fn(client)`,
 *   COMMIT (ROLLBACK if `fn` throws). The context is `SET LOCAL`: the connection's next
 *   transaction does not see it.
 * - With a client already inside a transaction: the context applies to what `fn` writes, then
 *   the previous context is restored; the caller's transaction stays open.
 *
 * @example
 * await withContext(pool, { userId: 42, requestId }, async (client) => {
 *   await client.query('UPDATE users SET email = $1 WHERE id = $2', [email, 42]);
 *   await notify(client, 'audit', { what: 'email changed' });
 * });
 */
export async function withContext<T>(
  db: pg.Pool | TransactionClient,
  context: NotificationContext,
  fn: (client: TransactionClient) => Promise<T>,
): Promise<T> {
  const json = contextJson(context);
  if (db instanceof pg.Pool) {
    const client = await db.connect();
    try {
      return await ownTransaction(client, json, fn);
    } finally {
      client.release();
    }
  }
  const status = transactionStatus(db);
  if (status === 'E') {
    throw new PgqError(
      'PGQ_TRANSACTION_ABORTED',
      'withContext: the client is in a failed transaction; roll it back first',
    );
  }
  if (status === 'T') return nested(db, json, fn);
  return ownTransaction(db, json, fn);
}

async function ownTransaction<T>(
  client: TransactionClient,
  json: string,
  fn: (client: TransactionClient) => Promise<T>,
): Promise<T> {
  const trace = await activeTrace();
  await client.query('BEGIN');
  try {
    await setLocalContext(client, json, trace);
    const result = await fn(client);
    await client.query('COMMIT');
    return result;
  } catch (error) {
    await client.query('ROLLBACK').catch(() => undefined);
    throw error;
  }
}

async function nested<T>(
  client: TransactionClient,
  json: string,
  fn: (client: TransactionClient) => Promise<T>,
): Promise<T> {
  const trace = await activeTrace();
  const previous = await readLocalContext(client);
  // The trace settings are restored too, but read only when they are about to change.
  const previousTrace = trace ? await readLocalTrace(client) : undefined;
  await setLocalContext(client, json, trace);
  try {
    return await fn(client);
  } finally {
    // In a transaction fn left failed, this fails too; the rollback ends the context anyway.
    if (transactionStatus(client) === 'T') await setLocalContext(client, previous, previousTrace);
  }
}
