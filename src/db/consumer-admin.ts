import type pg from 'pg';
import { quoteIdent } from '../identifiers.js';
import { explainLockWait } from './locks.js';
import type { Queryable } from './store.js';

/** A consumer as `consumers list` reads it from Postgres. */
export interface ConsumerRecord {
  id: string;
  /** Subscribed channels, sorted. */
  channels: string[];
  /** Channels of the definition in force (the newest registered); null before migration 0008. */
  definitionChannels: string[] | null;
  /** Channels removed with `consumers remove --channels` (not re-added by older definitions). */
  removedChannels: string[];
  jobOptions: Record<string, unknown>;
  batch: { size: number; maxWaitMs: number } | null;
  /** ordered, transactional, concurrency, timeout, startFrom of the definition in force. */
  settings: Record<string, unknown>;
  /** How many definitions (versions) were ever registered. */
  definitions: number;
  registeredAt: Date;
  lastSeenAt: Date | null;
  lastSeenWorker: string | null;
  /** Set when retired with `consumers remove <id>`. */
  retiredAt: Date | null;
  /** Rows of its channels it is owed that are not yet jobs. */
  unbridged: number;
  /** Deliveries the ledger records as failed (dead letters). */
  failed: number;
}

/** The ledger's view of one (consumer, notification). */
export interface DeliveryRecord {
  /** The notification's channel, or null when the row is gone (cleanup). */
  channel: string | null;
  /** Whether the consumer subscribes to that channel. */
  subscribed: boolean;
  /** The ledger's outcome, or null when none is recorded. */
  status: 'completed' | 'failed' | 'skipped' | null;
  attempts: number | null;
  lastError: string | null;
}

/**
 * SQL of `pgq-bridge consumers list | remove | skip`: inspecting and retiring consumers, removing
 * subscriptions, giving up dead letters. Removal runs under the subscriptions lock (exclusive),
 * like a registration, so no bridge batch fans out with a subscription half removed.
 */
export class ConsumerAdmin {
  private readonly s: string;
  private readonly lockKey: string;

  constructor(readonly schema: string) {
    this.s = quoteIdent(schema);
    this.lockKey = `pgq_bridge.subscriptions:${schema}`;
  }

  /** Every consumer, retired ones too, in id order. */
  async list(db: Queryable): Promise<ConsumerRecord[]> {
    const res = await db.query<{
      id: string;
      channels: string[];
      definition_channels: string[] | null;
      removed_channels: string[];
      job_options: Record<string, unknown>;
      batch: { size: number; maxWaitMs: number } | null;
      settings: Record<string, unknown> | null;
      definitions: number;
      registered_at: Date;
      last_seen_at: Date | null;
      last_seen_worker: string | null;
      retired_at: Date | null;
      unbridged: number;
      failed: number;
    }>(
      `SELECT c.id, c.job_options, c.batch, c.registered_at, c.last_seen_at, c.last_seen_worker,
              c.retired_at, d.channels AS definition_channels, d.settings,
              ARRAY(SELECT s.channel FROM ${this.s}.subscriptions s
                     WHERE s.consumer_id = c.id ORDER BY s.channel) AS channels,
              ARRAY(SELECT r.channel FROM ${this.s}.removed_subscriptions r
                     WHERE r.consumer_id = c.id ORDER BY r.channel) AS removed_channels,
              (SELECT count(*) FROM ${this.s}.consumer_definitions x
                WHERE x.consumer_id = c.id)::int AS definitions,
              -- Reads the partial index of unbridged rows only.
              (SELECT count(*) FROM ${this.s}.notifications n
                 JOIN ${this.s}.subscriptions s ON s.channel = n.channel AND n.id > s.after_id
                WHERE s.consumer_id = c.id AND n.bridged_at IS NULL)::int AS unbridged,
              (SELECT count(*) FROM ${this.s}.deliveries f
                WHERE f.consumer_id = c.id AND f.status = 'failed')::int AS failed
         FROM ${this.s}.consumers c
         LEFT JOIN ${this.s}.consumer_definitions d
                ON d.consumer_id = c.id AND d.fingerprint = c.definition
        ORDER BY c.id`,
    );
    return res.rows.map((r) => ({
      id: r.id,
      channels: r.channels,
      definitionChannels: r.definition_channels ? [...r.definition_channels].sort() : null,
      removedChannels: r.removed_channels,
      jobOptions: r.job_options,
      batch: r.batch,
      settings: r.settings ?? {},
      definitions: r.definitions,
      registeredAt: r.registered_at,
      lastSeenAt: r.last_seen_at,
      lastSeenWorker: r.last_seen_worker,
      retiredAt: r.retired_at,
      unbridged: r.unbridged,
      failed: r.failed,
    }));
  }

  /** The consumer's subscribed channels and retirement, or null when it is not registered. */
  async find(
    db: Queryable,
    id: string,
  ): Promise<{ channels: string[]; retiredAt: Date | null } | null> {
    const res = await db.query<{ channels: string[]; retired_at: Date | null }>(
      `SELECT c.retired_at, ARRAY(SELECT s.channel FROM ${this.s}.subscriptions s
                                   WHERE s.consumer_id = c.id ORDER BY s.channel) AS channels
         FROM ${this.s}.consumers c WHERE c.id = $1`,
      [id],
    );
    const row = res.rows[0];
    return row ? { channels: row.channels, retiredAt: row.retired_at } : null;
  }

  /**
   * Removes subscriptions (`channels`), or retires the consumer (`channels` null: every
   * subscription goes and `retired_at` is set), in one transaction under the subscriptions lock,
   * waited for at most `lockTimeoutMs`. Returns the channels unsubscribed.
   */
  async remove(
    client: pg.PoolClient | pg.Client,
    id: string,
    channels: string[] | null,
    lockTimeoutMs: number,
  ): Promise<string[]> {
    await client.query('BEGIN');
    try {
      await client.query(`SELECT set_config('lock_timeout', $1, true)`, [`${lockTimeoutMs}ms`]);
      await client.query(`SELECT pg_advisory_xact_lock(hashtextextended($1, 0))`, [this.lockKey]);
      const removed = await client.query<{ channel: string }>(
        `DELETE FROM ${this.s}.subscriptions
          WHERE consumer_id = $1 AND ($2::text[] IS NULL OR channel = ANY($2::text[]))
          RETURNING channel`,
        [id, channels],
      );
      const gone = removed.rows.map((r) => r.channel).sort();
      if (channels === null) {
        await client.query(
          `UPDATE ${this.s}.consumers SET retired_at = clock_timestamp() WHERE id = $1`,
          [id],
        );
      } else {
        await client.query(
          `INSERT INTO ${this.s}.removed_subscriptions (consumer_id, channel)
           SELECT $1, ch FROM unnest($2::text[]) AS ch
           ON CONFLICT (consumer_id, channel) DO UPDATE SET removed_at = clock_timestamp()`,
          [id, gone],
        );
      }
      await client.query('COMMIT');
      return gone;
    } catch (error) {
      await client.query('ROLLBACK').catch(() => undefined);
      throw await explainLockWait(client, error, 'the subscriptions lock', this.lockKey);
    }
  }

  /** What the ledger and the notifications table know of one delivery; null: no such row. */
  async delivery(
    db: Queryable,
    consumerId: string,
    notificationId: string,
  ): Promise<DeliveryRecord | null> {
    const res = await db.query<{
      channel: string | null;
      subscribed: boolean;
      status: DeliveryRecord['status'];
      attempts: number | null;
      last_error: string | null;
    }>(
      `SELECT n.channel, d.status, d.attempts, d.last_error,
              EXISTS (SELECT 1 FROM ${this.s}.subscriptions s
                       WHERE s.consumer_id = $1 AND s.channel = n.channel) AS subscribed
         FROM (SELECT $1::text AS consumer_id, $2::bigint AS id) k
         LEFT JOIN ${this.s}.notifications n ON n.id = k.id
         LEFT JOIN ${this.s}.deliveries d ON d.consumer_id = k.consumer_id AND d.notification_id = k.id
        WHERE n.id IS NOT NULL OR d.status IS NOT NULL`,
      [consumerId, notificationId],
    );
    const r = res.rows[0];
    if (!r) return null;
    return {
      channel: r.channel,
      subscribed: r.subscribed,
      status: r.status,
      attempts: r.attempts,
      lastError: r.last_error,
    };
  }

  /**
   * Records a delivery as given up ('skipped'), keeping its attempts and last error. Only a
   * failed delivery, or one without an outcome, is rewritten: returns false for a completed (or
   * already skipped) one.
   */
  async recordSkipped(
    db: Queryable,
    consumerId: string,
    notificationId: string,
    attempts: number,
  ): Promise<boolean> {
    const res = await db.query(
      `INSERT INTO ${this.s}.deliveries AS d (consumer_id, notification_id, status, attempts, last_error)
       VALUES ($1, $2, 'skipped', $3, 'skipped with pgq-bridge consumers skip')
       ON CONFLICT (consumer_id, notification_id) DO UPDATE
         SET status = 'skipped', finished_at = now(),
             last_error = 'skipped with pgq-bridge consumers skip; last error: ' || coalesce(d.last_error, '-')
       WHERE d.status = 'failed'`,
      [consumerId, notificationId, attempts],
    );
    return (res.rowCount ?? 0) > 0;
  }
}
