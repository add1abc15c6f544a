import pg from 'pg';
import { quoteIdent } from '../identifiers.js';
import { registerOne, type ConsumerRegistration, type RegistrationResult } from './registration.js';

import { explainLockWait } from './locks.js';

export type { ConsumerRegistration, RegistrationResult } from './registration.js';

/** How log lines name the lock that orders registrations and bridge batches. */
const SUBSCRIPTIONS_LOCK =
  'the subscriptions lock (taken by bridge batches, registrations, consumers remove)';

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
}

/** One (consumer, channel) subscription, with the consumer's job settings. */
export interface SubscriptionRow {
  consumer_id: string;
  channel: string;
  after_id: string;
  job_options: Record<string, unknown>;
  batch: { size: number; maxWaitMs: number } | null;
}

/** A final outcome recorded in the delivery ledger. */
export interface DeliveryOutcome {
  consumerId: string;
  notificationId: string;
  status: 'completed' | 'failed';
  attempts: number;
  lastError: string | null;
}

/**
 * Every SQL statement pgq-bridge runs against its own tables, for one schema. Nothing else in the
 * code base writes SQL for these tables, so this file is the database contract.
 */
export class Store {
  readonly schema: string;
  /** The NOTIFY channel that wakes listeners of this schema. */
  readonly wakeChannel: string;
  private readonly s: string;
  private readonly subscriptionsLockKey: string;

  constructor(schema: string) {
    this.schema = schema;
    this.s = quoteIdent(schema);
    this.wakeChannel = schema;
    this.subscriptionsLockKey = `pgq_bridge.subscriptions:${schema}`;
  }

  /** `LISTEN` statement for the wake-up channel. */
  listenSql(): string {
    return `LISTEN ${quoteIdent(this.wakeChannel)}`;
  }

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
   * Inside a bridge transaction: takes the subscriptions lock in shared mode (so a consumer's
   * registration waits for in-flight batches and later batches see it) and reads the
   * subscriptions. Call after BEGIN.
   */
  async readSubscriptionsLocked(db: Queryable): Promise<SubscriptionRow[]> {
    await db.query(`SELECT pg_advisory_xact_lock_shared(hashtextextended($1, 0))`, [
      this.subscriptionsLockKey,
    ]);
    return this.readSubscriptions(db);
  }

  /** Every subscription with its consumer's job settings. */
  async readSubscriptions(db: Queryable): Promise<SubscriptionRow[]> {
    const res = await db.query<SubscriptionRow>(this.subscriptionsSql());
    return res.rows;
  }

  private subscriptionsSql(): string {
    return `SELECT s.consumer_id, s.channel, s.after_id, c.job_options, c.batch
         FROM ${this.s}.subscriptions s JOIN ${this.s}.consumers c ON c.id = s.consumer_id
        ORDER BY s.consumer_id, s.channel`;
  }

  /**
   * Claims up to `limit` unbridged rows (skipping rows another listener holds) and marks them
   * bridged, in the caller's transaction: if the transaction rolls back, they are unbridged again.
   * `channels` restricts the claim; `minIdExclusive` skips older rows (`--skip-playback`).
   */
  async claimBatch(
    db: Queryable,
    limit: number,
    channels: string[] | null,
    minIdExclusive: string | null,
  ): Promise<NotificationRow[]> {
    const res = await db.query<NotificationRow>(this.claimSql('$1', '$2', '$3'), [
      limit,
      channels,
      minIdExclusive,
    ]);
    return res.rows;
  }

  /** The claim statement; the arguments are SQL expressions (parameters or literals). */
  private claimSql(limit: string, channels: string, minIdExclusive: string): string {
    // ANY(ARRAY(...)) makes the claimed ids an InitPlan probed through the primary key. A join
    // with the subquery lets the planner hash-join a sequential scan of the whole table, so
    // every batch cost grew with the table size (15 ms vs 3 ms per 500 rows at 50k rows).
    return `UPDATE ${this.s}.notifications n SET bridged_at = clock_timestamp()
        WHERE n.id = ANY(ARRAY(
               SELECT id FROM ${this.s}.notifications
                WHERE bridged_at IS NULL
                  AND (${channels}::text[] IS NULL OR channel = ANY(${channels}::text[]))
                  AND (${minIdExclusive}::bigint IS NULL OR id > ${minIdExclusive}::bigint)
                ORDER BY id LIMIT ${limit}
                FOR UPDATE SKIP LOCKED))
        RETURNING n.id, n.channel, n.payload::text AS payload, n.context::text AS context,
                  n.created_at, n.key, n.traceparent, n.tracestate`;
  }

  /**
   * The start of a bridge batch in one round trip instead of four: BEGIN, asynchronous commit for
   * this transaction, the shared subscriptions lock and the subscriptions
   * ({@link readSubscriptionsLocked}), and the claim ({@link claimBatch}). The caller adds the
   * jobs, then COMMITs (or ROLLBACKs). Sent as one simple-protocol query, so the values are
   * inlined as escaped literals.
   *
   * Why asynchronous commit is safe here: Redis already holds the batch's jobs when COMMIT runs.
   * If Postgres crashes before the commit reaches disk, the rows are unbridged again and the next
   * claim adds the same job ids, which BullMQ ignores; the commit no longer waits for a WAL flush
   * (and stops competing with the writers' own flushes).
   */
  async beginClaim(
    client: pg.PoolClient | pg.Client,
    limit: number,
    channels: string[] | null,
    minIdExclusive: string | null,
  ): Promise<{ subscriptions: SubscriptionRow[]; rows: NotificationRow[] }> {
    if (!Number.isInteger(limit) || limit < 1) throw new RangeError(`bad claim limit ${limit}`);
    if (minIdExclusive !== null && !/^\d+$/.test(minIdExclusive)) {
      throw new RangeError(`bad notification id ${minIdExclusive}`);
    }
    const channelList =
      channels === null ? 'NULL' : `ARRAY[${channels.map((c) => pg.escapeLiteral(c)).join(',')}]`;
    const results = (await client
      .query(
        [
          'BEGIN',
          'SET LOCAL synchronous_commit = off',
          `SELECT pg_advisory_xact_lock_shared(hashtextextended(${pg.escapeLiteral(this.subscriptionsLockKey)}, 0))`,
          this.subscriptionsSql(),
          this.claimSql(String(limit), channelList, minIdExclusive ?? 'NULL'),
        ].join(';\n'),
      )
      .catch(async (error: unknown) => {
        // The session's lock_timeout (src/db/pool.ts) bounds the wait for the shared lock: say
        // who holds it, so the retry's warning names the session that stops the bridge.
        await client.query('ROLLBACK').catch(() => undefined);
        throw await explainLockWait(client, error, SUBSCRIPTIONS_LOCK, this.subscriptionsLockKey);
      })) as unknown as pg.QueryResult[];
    return {
      subscriptions: results[3].rows as SubscriptionRow[],
      rows: results[4].rows as NotificationRow[],
    };
  }

  /**
   * Extends the wake-up lease (migration 0005) to at least `ms` from now, as its own autocommit
   * statement: inside a batch transaction its row lock would serialize listeners. While the lease
   * is live, `notify()` skips `pg_notify`. Returns the new end as text (microseconds kept, for
   * {@link releaseWakeupLease}).
   */
  async extendWakeupLease(db: Queryable, ms: number): Promise<string> {
    // Committed asynchronously: a lease lost in a Postgres crash only makes writers NOTIFY again,
    // and waiting for the WAL flush held up the listener's loop for milliseconds twice a second.
    const res = await db.query<{ until: string }>(
      `WITH async_commit AS (SELECT set_config('synchronous_commit', 'off', true))
       UPDATE ${this.s}.listener_lease
          SET awake_until = greatest(awake_until, clock_timestamp() + $1 * interval '1 millisecond')
         FROM async_commit
        RETURNING awake_until::text AS until`,
      [ms],
    );
    return res.rows[0]?.until ?? '-infinity';
  }

  /** Ends the wake-up lease now, unless another listener extended it beyond `until`. */
  async releaseWakeupLease(db: Queryable, until: string): Promise<void> {
    await db.query(
      `UPDATE ${this.s}.listener_lease SET awake_until = '-infinity'
        WHERE awake_until <= $1::timestamptz`,
      [until],
    );
  }

  /** Highest notification id stored so far ('0' when none). */
  async maxNotificationId(db: Queryable): Promise<string> {
    const res = await db.query<{ id: string | null }>(
      `SELECT max(id)::text AS id FROM ${this.s}.notifications`,
    );
    return res.rows[0].id ?? '0';
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
      const maxId = await this.maxNotificationId(client);
      for (const c of consumers) results.push(await registerOne(client, this.schema, c, maxId));
      await client.query('COMMIT');
      return results;
    } catch (error) {
      await client.query('ROLLBACK').catch(() => undefined);
      throw await explainLockWait(client, error, SUBSCRIPTIONS_LOCK, this.subscriptionsLockKey);
    }
  }

  /**
   * Records final outcomes in the delivery ledger, in one statement. Later outcomes win.
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
             last_error = EXCLUDED.last_error, finished_at = now()`,
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

  /** Unbridged rows and the age in seconds of the oldest one. */
  async backlog(db: Queryable): Promise<{ count: number; oldestAgeSeconds: number | null }> {
    const res = await db.query<{ count: string; age: number | null }>(
      `SELECT count(*)::bigint AS count,
              extract(epoch FROM now() - min(created_at))::float8 AS age
         FROM ${this.s}.notifications WHERE bridged_at IS NULL`,
    );
    return { count: Number(res.rows[0].count), oldestAgeSeconds: res.rows[0].age };
  }
}
