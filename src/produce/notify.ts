import { PgqError, UsageError } from '../errors.js';
import { assertChannel } from '../identifiers.js';
import { Store, type Queryable } from '../db/store.js';
import { currentTrace } from '../tracing.js';

/** Options of {@link notify}. */
export interface NotifyOptions {
  /** Schema pgq-bridge is installed in (default `pgq_bridge`). */
  schema?: string;
  /**
   * Ordering key (any string up to 512 bytes): an ordered consumer handles the notifications of
   * one key one at a time, in commit order (docs/ordering.md). Same-key writers serialize: the
   * second waits for the first transaction to end, like two writers of one row.
   */
  key?: string;
}

/** Longest ordering key, in bytes (UTF-8). */
export const MAX_KEY_BYTES = 512;

/** Throws a `UsageError` (`PGQ_INVALID_KEY`) unless `key` is a string of at most 512 bytes. */
export function assertKey(key: unknown): asserts key is string {
  if (typeof key !== 'string') {
    throw new UsageError(`ordering key must be a string, got ${typeof key}`, 'PGQ_INVALID_KEY');
  }
  const bytes = Buffer.byteLength(key, 'utf8');
  if (bytes > MAX_KEY_BYTES) {
    throw new UsageError(
      `ordering key too long (${bytes} bytes): keys may have at most ${MAX_KEY_BYTES} bytes`,
      'PGQ_INVALID_KEY',
    );
  }
  // Postgres text cannot hold NUL; refuse it here with a clear message instead of a driver error.
  if (key.includes('\u0000')) {
    throw new UsageError('ordering key must not contain NUL characters', 'PGQ_INVALID_KEY');
  }
}

const stores = new Map<string, Store>();
function storeFor(schema: string): Store {
  let store = stores.get(schema);
  if (!store) {
    store = new Store(schema);
    stores.set(schema, store);
  }
  return store;
}

/** Serializes a payload to JSON, refusing values JSON cannot represent faithfully. */
export function serializePayload(payload: unknown): string {
  let json: string | undefined;
  try {
    json = JSON.stringify(payload);
  } catch (error) {
    throw new PgqError(
      'PGQ_INVALID_PAYLOAD',
      `payload is not serializable to JSON: ${error instanceof Error ? error.message : String(error)}`,
    );
  }
  if (json === undefined) {
    throw new PgqError('PGQ_INVALID_PAYLOAD', 'payload is not serializable to JSON (undefined)');
  }
  return json;
}

/**
 * Stores a notification and wakes the listeners.
 *
 * Pass the `pg` client of your own transaction and the notification commits or rolls back with
 * your change; pass a Pool to store it on its own. When `@opentelemetry/api` is installed and a
 * span is active, its trace context is stored with the row and the handler's span continues the
 * trace (docs/tracing.md).
 *
 * @param db - a `pg` Pool, Client or PoolClient
 * @param channel - 1–63 characters of `[A-Za-z0-9_.:-]`
 * @param payload - any JSON-serializable value, of any size jsonb accepts
 * @param options - `schema`, and `key`: the ordering key (see {@link NotifyOptions.key})
 * @returns the notification id, as a decimal string (ids are bigint)
 * @throws PgqError `PGQ_INVALID_CHANNEL`, `PGQ_INVALID_PAYLOAD` or `PGQ_INVALID_KEY` before
 *   touching the database
 */
export async function notify(
  db: Queryable,
  channel: string,
  payload: unknown,
  options: NotifyOptions = {},
): Promise<string> {
  assertChannel(channel);
  if (options.key !== undefined) assertKey(options.key);
  const json = serializePayload(payload);
  // The caller's span context (docs/tracing.md); only the first call ever awaits here.
  let trace = currentTrace();
  if (trace instanceof Promise) trace = await trace;
  return storeFor(options.schema ?? 'pgq_bridge').insertNotification(
    db,
    channel,
    json,
    options.key,
    trace,
  );
}
