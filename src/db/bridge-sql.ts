import pg from 'pg';
import { quoteIdent } from '../identifiers.js';
import { explainLockWait } from './locks.js';
import type { NotificationRow, Queryable, SubscriptionRow } from './rows.js';

/** How log lines name the lock that orders registrations and bridge batches. */
export const SUBSCRIPTIONS_LOCK =
  'the subscriptions lock (taken by bridge batches, registrations, consumers remove)';

/**
 * Where a claim starts: rows after a boundary taken with {@link BridgeStore.boundary}
 * (`listen --skip-playback`). `snapshot` null means the boundary is settled: no transaction it
 * could not see is still open, so `id > maxId` alone is exact.
 */
export interface ClaimBoundary {
  maxId: string;
  snapshot: string | null;
}

/** Which unbridged rows one claim takes. */
export interface ClaimSpec {
  limit: number;
  /** Only rows of these channels (null: all). */
  channels: string[] | null;
  /** Only rows created at or after this time (`reconcile --since`). */
  since: Date | null;
  /** Only rows committed after this boundary (null: all). */
  after: ClaimBoundary | null;
}

/** A boundary in commit order: the newest id and the snapshot it was read in. */
export interface Boundary {
  maxId: string;
  snapshot: string;
}

/** A row at or below a subscription's after_id that committed after its boundary (see 0007). */
export interface LateDelivery {
  consumerId: string;
  channel: string;
  id: string;
}

const SNAPSHOT = /^\d+:\d+:[\d,]*$/;
const ID = /^\d+$/;

/**
 * The bridge's SQL: the subscriptions it reads, the claim of unbridged rows (one statement shape
 * for the listener, reconcile and every other caller of `bridge/batch.ts`), boundaries in commit
 * order, and the wake-up lease. `Store` (db/store.ts) extends it with the rest.
 */
export class BridgeStore {
  readonly schema: string;
  /** The NOTIFY channel that wakes listeners of this schema. */
  readonly wakeChannel: string;
  protected readonly s: string;
  protected readonly subscriptionsLockKey: string;

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

  /** Every subscription with its consumer's job settings. */
  async readSubscriptions(db: Queryable): Promise<SubscriptionRow[]> {
    const res = await db.query<SubscriptionRow>(this.subscriptionsSql());
    return res.rows;
  }

  /**
   * Inside a transaction: takes the subscriptions lock in shared mode (so a consumer's
   * registration waits for it and later transactions see the registration) and reads the
   * subscriptions. Call after BEGIN.
   */
  async readSubscriptionsLocked(db: Queryable): Promise<SubscriptionRow[]> {
    await db.query(`SELECT pg_advisory_xact_lock_shared(hashtextextended($1, 0))`, [
      this.subscriptionsLockKey,
    ]);
    return this.readSubscriptions(db);
  }

  private subscriptionsSql(): string {
    return `SELECT s.consumer_id, s.channel, s.after_id, s.boundary::text AS boundary,
                   c.job_options, c.batch
         FROM ${this.s}.subscriptions s JOIN ${this.s}.consumers c ON c.id = s.consumer_id
        ORDER BY s.consumer_id, s.channel`;
  }

  /** The statements that open a bridge transaction, ending with the subscriptions' SELECT. */
  private beginSql(): string[] {
    return [
      'BEGIN',
      // Why asynchronous commit is safe: Redis already holds the batch's jobs when COMMIT runs. If
      // Postgres crashes before the commit reaches disk, the rows are unbridged again and the next
      // claim adds the same job ids, which BullMQ ignores.
      'SET LOCAL synchronous_commit = off',
      // Shared: a consumer's registration (exclusive) waits for batches in flight, and every
      // later batch sees its subscriptions.
      `SELECT pg_advisory_xact_lock_shared(hashtextextended(${pg.escapeLiteral(this.subscriptionsLockKey)}, 0))`,
      this.subscriptionsSql(),
    ];
  }

  /**
   * The claim: up to `limit` unbridged rows (skipping rows another transaction holds) marked
   * bridged in the caller's transaction; a rollback unbridges them again. Values are inlined as
   * literals, so the statement can travel with BEGIN in one simple-protocol query.
   *
   * ANY(ARRAY(...)) makes the claimed ids an InitPlan probed through the primary key; a join with
   * the subquery lets the planner hash-join a sequential scan of the whole table, so every batch
   * cost grew with the table (15 ms vs 3 ms per 500 rows at 50k rows). test/integration/
   * claim-plan.test.ts checks the plan.
   */
  claimSql(spec: ClaimSpec): string {
    if (!Number.isInteger(spec.limit) || spec.limit < 1) {
      throw new RangeError(`bad claim limit ${spec.limit}`);
    }
    const where = ['bridged_at IS NULL'];
    if (spec.channels) {
      where.push(
        `channel = ANY(ARRAY[${spec.channels.map((c) => pg.escapeLiteral(c)).join(',')}]::text[])`,
      );
    }
    if (spec.since)
      where.push(`created_at >= ${pg.escapeLiteral(spec.since.toISOString())}::timestamptz`);
    if (spec.after) {
      if (!ID.test(spec.after.maxId))
        throw new RangeError(`bad notification id ${spec.after.maxId}`);
      const snapshot = spec.after.snapshot;
      if (snapshot === null) where.push(`id > ${spec.after.maxId}`);
      else {
        if (!SNAPSHOT.test(snapshot)) throw new RangeError(`bad snapshot ${snapshot}`);
        where.push(
          `(id > ${spec.after.maxId} OR NOT pg_visible_in_snapshot(xid, '${snapshot}'::pg_snapshot))`,
        );
      }
    }
    return `UPDATE ${this.s}.notifications n SET bridged_at = clock_timestamp()
        WHERE n.id = ANY(ARRAY(
               SELECT id FROM ${this.s}.notifications
                WHERE ${where.join('\n                  AND ')}
                ORDER BY id LIMIT ${spec.limit}
                FOR UPDATE SKIP LOCKED))
        RETURNING n.id, n.channel, n.payload::text AS payload, n.context::text AS context,
                  n.created_at, n.key, n.traceparent, n.tracestate, n.xid::text AS xid`;
  }

  /**
   * The start of a bridge batch in one round trip: BEGIN, asynchronous commit, the shared
   * subscriptions lock, the subscriptions, and the claim ({@link claimSql}). The caller adds the
   * jobs, then COMMITs (or ROLLBACKs).
   */
  async beginClaim(
    client: pg.PoolClient | pg.Client,
    spec: ClaimSpec,
  ): Promise<{ subscriptions: SubscriptionRow[]; rows: NotificationRow[] }> {
    const results = await this.begin(client, this.claimSql(spec));
    return {
      subscriptions: results[3].rows as SubscriptionRow[],
      rows: results[4].rows as NotificationRow[],
    };
  }

  /** {@link beginClaim} without the claim: for batches whose rows are read, not claimed. */
  async beginRead(client: pg.PoolClient | pg.Client): Promise<SubscriptionRow[]> {
    const results = await this.begin(client);
    return results[3].rows as SubscriptionRow[];
  }

  private async begin(
    client: pg.PoolClient | pg.Client,
    ...more: string[]
  ): Promise<pg.QueryResult[]> {
    try {
      return (await client.query(
        [...this.beginSql(), ...more].join(';\n'),
      )) as unknown as pg.QueryResult[];
    } catch (error) {
      // The session's lock_timeout (src/db/pool.ts) bounds the wait for the shared lock: say
      // who holds it, so the retry's warning names the session that stops the bridge.
      await client.query('ROLLBACK').catch(() => undefined);
      throw await explainLockWait(client, error, SUBSCRIPTIONS_LOCK, this.subscriptionsLockKey);
    }
  }

  /**
   * COMMIT, preceded in the same round trip by the record of late deliveries (0007's
   * first_late_id), which a batch has only when a boundary met a transaction that committed late.
   */
  async commit(client: pg.PoolClient | pg.Client, late: readonly LateDelivery[]): Promise<void> {
    if (late.length === 0) {
      await client.query('COMMIT');
      return;
    }
    const values = late
      .map((l) => {
        if (!ID.test(l.id)) throw new RangeError(`bad notification id ${l.id}`);
        return `(${pg.escapeLiteral(l.consumerId)}, ${pg.escapeLiteral(l.channel)}, ${l.id}::bigint)`;
      })
      .join(', ');
    await client.query(
      `UPDATE ${this.s}.subscriptions s
          SET first_late_id = least(s.first_late_id, v.id)
         FROM (SELECT consumer_id, channel, min(id) AS id FROM (VALUES ${values}) AS l(consumer_id, channel, id)
                GROUP BY consumer_id, channel) v
        WHERE s.consumer_id = v.consumer_id AND s.channel = v.channel;
       COMMIT`,
    );
  }

  /**
   * A boundary in commit order: the newest id and pg_current_snapshot(), read by one statement
   * and so in one snapshot. Rows after it: id > maxId, or a transaction the snapshot does not see.
   */
  async boundary(db: Queryable): Promise<Boundary> {
    const res = await db.query<{ max_id: string; snapshot: string }>(
      `SELECT coalesce(max(id), 0)::text AS max_id, pg_current_snapshot()::text AS snapshot
         FROM ${this.s}.notifications`,
    );
    return { maxId: res.rows[0].max_id, snapshot: res.rows[0].snapshot };
  }

  /**
   * Whether every transaction the snapshot could not see has ended since: then no row at or below
   * its max id can still commit after it (bar an id taken just before the boundary by a writer
   * that had no transaction id yet, see docs/architecture.md), and the id alone decides.
   */
  async boundarySettled(db: Queryable, snapshot: string): Promise<boolean> {
    const res = await db.query<{ settled: boolean }>(
      `SELECT pg_snapshot_xmin(pg_current_snapshot()) >= pg_snapshot_xmax($1::pg_snapshot) AS settled`,
      [snapshot],
    );
    return res.rows[0].settled;
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
}
