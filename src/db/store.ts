import type pg from 'pg';
import { BridgeStore, SUBSCRIPTIONS_LOCK } from './bridge-sql.js';
import { explainLockWait } from './locks.js';
import { registerOne, type ConsumerRegistration, type RegistrationResult } from './registration.js';
import type { Queryable } from './rows.js';

export type { ConsumerRegistration, RegistrationResult } from './registration.js';
export type { NotificationRow, Queryable, SubscriptionRow } from './rows.js';

/** A final outcome recorded in the delivery ledger. */
export interface DeliveryOutcome {
  consumerId: string;
  notificationId: string;
  status: 'completed' | 'failed';
  attempts: number;
  lastError: string | null;
}

/**
 * SQL of the produce and consume stages for one schema: storing a notification, registering
 * consumers, the delivery ledger. The bridge's SQL (subscriptions, claim, boundaries, lease) is
 * inherited from {@link BridgeStore} (db/bridge-sql.ts); recovery's is in db/recovery.ts and
 * db/owed-sql.ts.
 */
export class Store extends BridgeStore {
  /**
   * Stores one notification (through the SQL `notify()`, so both paths share its rules). With a
   * key, the three-argument `notify()`; without, the two-argument one, which pays nothing for keys.
   */
  async insertNotification(
    db: Queryable,
    channel: string,
    payloadJson: string,
    key?: string,
    trace?: { traceparent: string; tracestate?: string },
  ): Promise<string> {
    const res = trace
      ? // With the writer's trace context (migration 0010); without one, the functions below
        // read the transaction's pgq_bridge.traceparent setting.
        await db.query<{ id: string }>(
          `SELECT ${this.s}.notify($1, $2::jsonb, $3::text, $4::text, $5::text) AS id`,
          [channel, payloadJson, key ?? null, trace.traceparent, trace.tracestate ?? null],
        )
      : key === undefined
        ? await db.query<{ id: string }>(`SELECT ${this.s}.notify($1, $2::jsonb) AS id`, [
            channel,
            payloadJson,
          ])
        : await db.query<{ id: string }>(`SELECT ${this.s}.notify($1, $2::jsonb, $3::text) AS id`, [
            channel,
            payloadJson,
            key,
          ]);
    return res.rows[0].id;
  }

  /**
   * Registers (or updates) consumers and their subscriptions. Runs under the subscriptions lock
   * in exclusive mode, so no bridge batch is in flight while it changes and every later batch
   * sees the new subscriptions. Registration only ever adds: a subscription the definition does
   * not list is kept (another version of the consumer may list it; `pgq-bridge consumers remove`
   * removes it), and the job options of the newest definition stay in force while an older one
   * registers beside it (src/db/registration.ts). A new subscription starts after the newest
   * stored notification (`startFrom: 'now'`) or at the beginning; existing ones keep their start.
   *
   * The lock is waited for at most `lockTimeoutMs` (default 10 s): a session holding it (or a
   * registration frozen half-way) makes this fail with a `lock_timeout` error, which the caller
   * logs and retries, instead of waiting for ever.
   */
  async registerConsumers(
    client: pg.PoolClient | pg.Client,
    consumers: ConsumerRegistration[],
    lockTimeoutMs = 10_000,
  ): Promise<RegistrationResult[]> {
    const results: RegistrationResult[] = [];
    await client.query('BEGIN');
    try {
      await client.query(`SELECT set_config('lock_timeout', $1, true)`, [`${lockTimeoutMs}ms`]);
      await client.query(`SELECT pg_advisory_xact_lock(hashtextextended($1, 0))`, [
        this.subscriptionsLockKey,
      ]);
      // One statement: the newest id and the snapshot it was read in (commit order, 0007).
      const { maxId, snapshot } = await this.boundary(client);
      for (const c of consumers) {
        results.push(await registerOne(client, this.schema, c, maxId, snapshot));
      }
      await client.query('COMMIT');
      return results;
    } catch (error) {
      await client.query('ROLLBACK').catch(() => undefined);
      throw await explainLockWait(client, error, SUBSCRIPTIONS_LOCK, this.subscriptionsLockKey);
    }
  }

  /**
   * Records final outcomes in the delivery ledger, in one statement. Later outcomes win, except
   * that a failure never replaces a completion or a skip.
   *
   * Committed synchronously, unlike the bridge's batches: an outcome lost in a Postgres crash
   * after this returned is never written again (the worker no longer holds it), and with the job
   * gone from Redis `reconcile --verify` would run the notification again. Tried asynchronous:
   * ledger-first consumers drained 9% faster, and the soak reran 22 notifications after one
   * Postgres crash.
   */
  async recordOutcomes(db: Queryable, outcomes: DeliveryOutcome[]): Promise<void> {
    if (outcomes.length === 0) return;
    // One row per key: a batch may carry a failure then a success of the same delivery.
    const latest = new Map<string, DeliveryOutcome>();
    for (const o of outcomes) latest.set(`${o.consumerId}\u0000${o.notificationId}`, o);
    const rows = [...latest.values()];
    await db.query(
      `INSERT INTO ${this.s}.deliveries AS d (consumer_id, notification_id, status, attempts, last_error)
       SELECT * FROM unnest($1::text[], $2::bigint[], $3::text[], $4::int[], $5::text[])
       ON CONFLICT (consumer_id, notification_id) DO UPDATE
         SET status = EXCLUDED.status, attempts = EXCLUDED.attempts,
             last_error = EXCLUDED.last_error, finished_at = now()
         -- A failure never overwrites a completion (or a skip): a twin run of the delivery (a
         -- duplicate job) that failed after another committed must not make it look owed again,
         -- or reconcile --failed would run a transactional consumer's effect a second time.
         WHERE EXCLUDED.status = 'completed' OR d.status NOT IN ('completed', 'skipped')`,
      [
        rows.map((o) => o.consumerId),
        rows.map((o) => o.notificationId),
        rows.map((o) => o.status),
        rows.map((o) => o.attempts),
        rows.map((o) => o.lastError),
      ],
    );
  }

  /** Notification ids among `ids` that `consumerId` already completed, per the ledger. */
  async completedAmong(db: Queryable, consumerId: string, ids: string[]): Promise<Set<string>> {
    if (ids.length === 0) return new Set();
    const res = await db.query<{ id: string }>(
      `SELECT notification_id::text AS id FROM ${this.s}.deliveries
        WHERE consumer_id = $1 AND notification_id = ANY($2::bigint[])
          AND status IN ('completed', 'skipped')`,
      [consumerId, ids],
    );
    return new Set(res.rows.map((r) => r.id));
  }
}
