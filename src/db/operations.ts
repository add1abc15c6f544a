import { quoteIdent } from '../identifiers.js';
import type { Queryable } from './store.js';

/** A registered consumer as operations tools show it. */
export interface ConsumerInfo {
  id: string;
  /** Channels it subscribes to, sorted. */
  channels: string[];
  registeredAt: Date;
  /** When a worker last registered or heartbeated it (null if never). */
  lastSeenAt: Date | null;
  /** `host:pid` of that worker. */
  lastSeenWorker: string | null;
}

/** Unbridged rows: how many, and how old the oldest is. */
export interface Backlog {
  count: number;
  /** Seconds since the oldest unbridged row was stored; null when there is none. */
  oldestAgeSeconds: number | null;
}

/**
 * Read-only queries of the operations tools (status, board, metrics). Kept apart from the
 * bridge's `Store` because none of them is on the hot path and all of them only read.
 */
export class OperationsQueries {
  private readonly s: string;

  constructor(readonly schema: string) {
    this.s = quoteIdent(schema);
  }

  /** Every registered consumer with its channels, in id order. */
  async listConsumers(db: Queryable): Promise<ConsumerInfo[]> {
    const res = await db.query<{
      id: string;
      channels: string[];
      registered_at: Date;
      last_seen_at: Date | null;
      last_seen_worker: string | null;
    }>(
      `SELECT c.id,
              coalesce(array_agg(s.channel ORDER BY s.channel) FILTER (WHERE s.channel IS NOT NULL),
                       '{}') AS channels,
              c.registered_at, c.last_seen_at, c.last_seen_worker
         FROM ${this.s}.consumers c
         LEFT JOIN ${this.s}.subscriptions s ON s.consumer_id = c.id
        GROUP BY c.id
        ORDER BY c.id`,
    );
    return res.rows.map((r) => ({
      id: r.id,
      channels: r.channels,
      registeredAt: r.registered_at,
      lastSeenAt: r.last_seen_at,
      lastSeenWorker: r.last_seen_worker,
    }));
  }

  /** Ids of the registered consumers (cheap: the board polls it). */
  async consumerIds(db: Queryable): Promise<string[]> {
    const res = await db.query<{ id: string }>(`SELECT id FROM ${this.s}.consumers ORDER BY id`);
    return res.rows.map((r) => r.id);
  }

  /** Unbridged rows and the age of the oldest (reads the partial index of unbridged rows). */
  async backlog(db: Queryable): Promise<Backlog> {
    const res = await db.query<{ count: string; age: number | null }>(
      `SELECT count(*)::bigint AS count,
              extract(epoch FROM clock_timestamp() - min(created_at))::float8 AS age
         FROM ${this.s}.notifications WHERE bridged_at IS NULL`,
    );
    const age = res.rows[0].age;
    return {
      count: Number(res.rows[0].count),
      oldestAgeSeconds: age === null ? null : Math.max(0, age),
    };
  }

  /**
   * Fraction (0–1) of Postgres' NOTIFY queue in use. It grows when a listening session stays in a
   * transaction (or stops reading); at 1 every NOTIFY — and so every `notify()` — fails.
   */
  async notificationQueueUsage(db: Queryable): Promise<number> {
    const res = await db.query<{ usage: number }>(
      `SELECT pg_notification_queue_usage()::float8 AS usage`,
    );
    return res.rows[0].usage;
  }
}
