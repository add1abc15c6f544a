import type pg from 'pg';

/** Anything that can run a query: a pg Pool, Client or PoolClient. */
export type Queryable = pg.Pool | pg.Client | pg.PoolClient;

/** A notification row as the bridge reads it (payload kept as JSON text: it goes to Redis as is). */
export interface NotificationRow {
  id: string;
  channel: string;
  payload: string;
  context: string | null;
  created_at: Date;
  /** Ordering key (migration 0009); null or absent when the row has none. */
  key?: string | null;
  /** The writer's W3C trace context (migration 0010); null or absent when it had none. */
  traceparent?: string | null;
  tracestate?: string | null;
  /**
   * The writing transaction (xid8 as text, migration 0007), for boundaries in commit order.
   * Absent where no boundary applies (rows read back for a replay).
   */
  xid?: string;
}

/** One (consumer, channel) subscription, with the consumer's job settings. */
export interface SubscriptionRow {
  consumer_id: string;
  channel: string;
  /** Every row with a greater id is owed (and, with a `boundary`, some below: see below). */
  after_id: string;
  /**
   * The snapshot taken with `after_id` (pg_snapshot as text), or null: a row at or below
   * `after_id` is owed too when this snapshot does not see its transaction (it committed later).
   */
  boundary?: string | null;
  job_options: Record<string, unknown>;
  batch: { size: number; maxWaitMs: number } | null;
}

/** Key of a (consumer, notification) pair in sets and maps. */
export function pairKey(consumerId: string, notificationId: string): string {
  return `${consumerId}\u0000${notificationId}`;
}
