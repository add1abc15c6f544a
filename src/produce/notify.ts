import { PgqError } from '../errors.js';
import { assertChannel } from '../identifiers.js';
import { Store, type Queryable } from '../db/store.js';

/** Options of {@link notify}. */
export interface NotifyOptions {
  /** Schema pgq-bridge is installed in (default `pgq_bridge`). */
  schema?: string;
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
 * your change; pass a Pool to store it on its own.
 *
 * @param db - a `pg` Pool, Client or PoolClient
 * @param channel - 1–63 characters of `[A-Za-z0-9_.:-]`
 * @param payload - any JSON-serializable value, of any size jsonb accepts
 * @returns the notification id, as a decimal string (ids are bigint)
 * @throws PgqError `PGQ_INVALID_CHANNEL` or `PGQ_INVALID_PAYLOAD` before touching the database
 */
export async function notify(
  db: Queryable,
  channel: string,
  payload: unknown,
  options: NotifyOptions = {},
): Promise<string> {
  assertChannel(channel);
  const json = serializePayload(payload);
  return storeFor(options.schema ?? 'pgq_bridge').insertNotification(db, channel, json);
}
