import { quoteIdent } from '../identifiers.js';
import { pairKey, type NotificationRow, type Queryable } from './rows.js';

/** A subscription as reconcile sees it: its range of owed rows and its consumer's job options. */
export interface OwedSubscription {
  consumer_id: string;
  channel: string;
  /** The consumer is owed rows of the channel with a greater id (and late ones, migration 0007). */
  after_id: string;
  /** Where a walk in id order must start to meet every owed row: after_id or a late row below. */
  walk_from_id: string;
  /** Playback is still to enqueue rows up to this id (db/owed-sql.ts). */
  playback_pending: boolean;
  job_options: Record<string, unknown>;
  /** A batch consumer: its notifications may wait inside batch jobs (`b...`), not `n<id>` jobs. */
  is_batch: boolean;
}

/** A failed delivery from the ledger, with its notification's channel (null if it was deleted). */
export interface FailedDelivery {
  notification_id: string;
  channel: string | null;
}

/** Counters of one cleanup batch. */
export interface CleanupBatch {
  /** Highest id of the page (the next page starts after it), or null when the page was empty. */
  lastId: string | null;
  /** Rows in the page (old or not, bridged or not): fewer than the limit means the end. */
  pageRows: number;
  /** Rows of the page created before the cutoff: none means the old part of the table is over. */
  oldRows: number;
  /** Old bridged rows examined. */
  scanned: number;
  /** Rows deleted (or that would be, in a dry run). */
  deleted: number;
  /** Ledger rows deleted with them (or that would be). */
  ledgerRows: number;
}

/**
 * SQL of reconcile and cleanup (the walks of owed rows are in db/owed-sql.ts). Every scan is a keyset walk over the notifications'
 * primary key (`id > $last ORDER BY id LIMIT n`), so memory stays flat and no index is needed on
 * the hot table beyond the ones the listener already uses.
 */
export class RecoveryStore {
  private readonly s: string;

  constructor(readonly schema: string) {
    this.s = quoteIdent(schema);
  }

  /**
   * Inside a reconcile or cleanup transaction: COMMIT returns without waiting for the WAL flush.
   * If the server crashes before the flush, the transaction is lost as if it never ran: rows
   * stay unbridged (their jobs are added again with the same ids on the next run) or stay
   * undeleted. Both are safe to redo, so a disk flush per batch buys nothing here.
   */
  async relaxCommit(db: Queryable): Promise<void> {
    await db.query(`SET LOCAL synchronous_commit = off`);
  }

  /** Registered consumer ids, to validate `--consumers`. */
  async consumerIds(db: Queryable): Promise<string[]> {
    const res = await db.query<{ id: string }>(`SELECT id FROM ${this.s}.consumers ORDER BY id`);
    return res.rows.map((r) => r.id);
  }

  /** Subscriptions of the given consumers (null: all) on the given channels (null: all). */
  async subscriptions(
    db: Queryable,
    consumers: string[] | null,
    channels: string[] | null,
  ): Promise<OwedSubscription[]> {
    const res = await db.query<OwedSubscription>(
      `SELECT s.consumer_id, s.channel, s.after_id::text,
              least(s.after_id, s.first_late_id - 1)::text AS walk_from_id,
              greatest(s.after_id, s.playback_cursor) < s.playback_through_id AS playback_pending,
              c.job_options, c.batch IS NOT NULL AS is_batch
         FROM ${this.s}.subscriptions s JOIN ${this.s}.consumers c ON c.id = s.consumer_id
        WHERE ($1::text[] IS NULL OR s.consumer_id = ANY($1))
          AND ($2::text[] IS NULL OR s.channel = ANY($2))
        ORDER BY s.consumer_id, s.channel`,
      [consumers, channels],
    );
    return res.rows;
  }

  /** (consumer, notification) pairs among `ids` the ledger shows completed, as `consumer\0id`. */
  async completedPairs(db: Queryable, ids: string[]): Promise<Set<string>> {
    if (ids.length === 0) return new Set();
    const res = await db.query<{ consumer_id: string; id: string }>(
      `SELECT consumer_id, notification_id::text AS id FROM ${this.s}.deliveries
        WHERE notification_id = ANY($1::bigint[]) AND status IN ('completed', 'skipped')`,
      [ids],
    );
    return new Set(res.rows.map((r) => pairKey(r.consumer_id, r.id)));
  }

  /** Full rows for the given ids (payload as JSON text), in id order. */
  async rowsByIds(db: Queryable, ids: string[]): Promise<NotificationRow[]> {
    if (ids.length === 0) return [];
    const res = await db.query<NotificationRow>(
      `SELECT n.id::text AS id, n.channel, n.payload::text AS payload,
              n.context::text AS context, n.created_at, n.key, n.traceparent, n.tracestate
         FROM ${this.s}.notifications n WHERE n.id = ANY($1::bigint[]) ORDER BY n.id`,
      [ids],
    );
    return res.rows;
  }

  /** A page of a consumer's failed deliveries (dead letters) per the ledger. */
  async failedPage(
    db: Queryable,
    consumerId: string,
    afterId: string,
    limit: number,
    channels: string[] | null,
    since: Date | null,
  ): Promise<FailedDelivery[]> {
    const res = await db.query<FailedDelivery>(
      `SELECT d.notification_id::text, n.channel
         FROM ${this.s}.deliveries d
         LEFT JOIN ${this.s}.notifications n ON n.id = d.notification_id
        WHERE d.consumer_id = $1 AND d.status = 'failed' AND d.notification_id > $2
          AND ($4::text[] IS NULL OR n.channel = ANY($4))
          AND ($5::timestamptz IS NULL OR n.created_at >= $5)
        ORDER BY d.notification_id LIMIT $3`,
      [consumerId, afterId, limit, channels, since],
    );
    return res.rows;
  }

  /** The ledger's outcome for each of `ids` and one consumer (absent: none recorded). */
  async outcomes(
    db: Queryable,
    consumerId: string,
    ids: string[],
  ): Promise<Map<string, 'completed' | 'failed' | 'skipped'>> {
    if (ids.length === 0) return new Map();
    const res = await db.query<{ id: string; status: 'completed' | 'failed' | 'skipped' }>(
      `SELECT notification_id::text AS id, status FROM ${this.s}.deliveries
        WHERE consumer_id = $1 AND notification_id = ANY($2::bigint[])`,
      [consumerId, ids],
    );
    return new Map(res.rows.map((r) => [r.id, r.status]));
  }

  /** The cleanup cutoff: `days` before the database's now(); `text` keeps the microseconds. */
  async cutoff(db: Queryable, days: number): Promise<{ text: string; date: Date }> {
    const res = await db.query<{ text: string; date: Date }>(
      `SELECT c::text AS text, c AS date FROM (SELECT now() - $1::float8 * interval '1 day' AS c) t`,
      [days],
    );
    return res.rows[0];
  }

  /**
   * The highest id of a row created before `cutoff` (null: none), read once per cleanup run:
   * cleanup walks past pages without old rows up to it, for rows whose created_at does not follow
   * their id (a bulk load with old timestamps). The BRIN index of 0011 keeps it to the block
   * ranges of old rows.
   */
  async lastIdBefore(db: Queryable, cutoff: string): Promise<string | null> {
    const res = await db.query<{ id: string | null }>(
      `SELECT max(id)::text AS id FROM ${this.s}.notifications WHERE created_at < $1::timestamptz`,
      [cutoff],
    );
    return res.rows[0].id;
  }

  /**
   * One cleanup batch: the next `limit` rows by id (keyset after `afterId`, a plain range of the
   * primary key), of which those created before `cutoff` and bridged are examined: the finished
   * ones are deleted with their ledger rows (or only
   * counted, with `dryRun`). Finished: every consumer subscribed to the row's channel and owed it
   * (`is_owed`, migration 0007) has a `completed` outcome; `force` deletes the page's rows regardless.
   * Why created_at is tested on the page and not in the scan: as a scan filter it made the last
   * page walk every newer row of the table looking for old ones (cleanup cost the table's size,
   * not what it deleted); on the page, the caller stops at the first page without old rows.
   * Run it in a transaction that holds the subscriptions lock (shared), so a consumer registering
   * at the same moment sees either the row or its absence, never half of a batch.
   */
  async cleanupBatch(
    db: Queryable,
    params: { afterId: string; cutoff: string; limit: number; force: boolean; dryRun: boolean },
  ): Promise<CleanupBatch> {
    const finished = `
      page AS (
        SELECT id, channel, bridged_at, xid, created_at < $2::timestamptz AS old
          FROM ${this.s}.notifications
         WHERE id > $1
         ORDER BY id LIMIT $3),
      candidates AS (SELECT id, channel, xid FROM page WHERE old AND bridged_at IS NOT NULL),
      finished AS (
        SELECT p.id FROM candidates p
         WHERE $4::boolean OR NOT EXISTS (
           SELECT 1 FROM ${this.s}.subscriptions s
            WHERE s.channel = p.channel AND ${this.s}.is_owed(p.id, p.xid, s.after_id, s.boundary)
              AND NOT EXISTS (
                SELECT 1 FROM ${this.s}.deliveries d
                 WHERE d.consumer_id = s.consumer_id AND d.notification_id = p.id
                   AND d.status IN ('completed', 'skipped'))))`;
    const sql = params.dryRun
      ? `WITH ${finished}
         SELECT (SELECT max(id)::text FROM page) AS last_id,
                (SELECT count(*) FROM page)::int AS page_rows,
                (SELECT count(*) FROM page WHERE old)::int AS old_rows,
                (SELECT count(*) FROM candidates)::int AS scanned,
                (SELECT count(*) FROM finished)::int AS deleted,
                (SELECT count(*) FROM ${this.s}.deliveries d
                  WHERE d.notification_id IN (SELECT id FROM finished))::int AS ledger_rows`
      : `WITH ${finished},
         deleted_deliveries AS (
           DELETE FROM ${this.s}.deliveries d USING finished f
            WHERE d.notification_id = f.id RETURNING 1),
         deleted AS (
           DELETE FROM ${this.s}.notifications n USING finished f
            WHERE n.id = f.id RETURNING 1)
         SELECT (SELECT max(id)::text FROM page) AS last_id,
                (SELECT count(*) FROM page)::int AS page_rows,
                (SELECT count(*) FROM page WHERE old)::int AS old_rows,
                (SELECT count(*) FROM candidates)::int AS scanned,
                (SELECT count(*) FROM deleted)::int AS deleted,
                (SELECT count(*) FROM deleted_deliveries)::int AS ledger_rows`;
    const res = await db.query<{
      last_id: string | null;
      page_rows: number;
      old_rows: number;
      scanned: number;
      deleted: number;
      ledger_rows: number;
    }>(sql, [params.afterId, params.cutoff, params.limit, params.force]);
    const row = res.rows[0];
    return {
      lastId: row.last_id,
      pageRows: row.page_rows,
      oldRows: row.old_rows,
      scanned: row.scanned,
      deleted: row.deleted,
      ledgerRows: row.ledger_rows,
    };
  }
}
