import { quoteIdent } from '../identifiers.js';
import type { NotificationRow, Queryable } from './rows.js';

/** One (notification, consumer owed it) pair of a scanned page, with the ledger's outcome. */
export interface OwedPair {
  id: string;
  channel: string;
  /** Null for a row of the page that no selected consumer is owed (keeps the keyset moving). */
  consumer_id: string | null;
  /** The ledger's outcome for this pair, or null when none is recorded. */
  status: 'completed' | 'failed' | 'skipped' | null;
}

/** A subscription whose playback is not finished, locked by {@link OwedStore.pendingPlayback}. */
export interface PendingPlayback {
  channel: string;
  /** Rows above this id are still to play (after_id or the playback cursor). */
  from_id: string;
  /** ... up to this id (the newest id when the subscription was created). */
  through_id: string;
}

/** One page of a playback walk. */
export interface PlaybackPage {
  /** The rows owed to the consumer (full rows, ready for jobs). */
  rows: NotificationRow[];
  /** Rows read (owed or not): fewer than the limit means the walk reached its end. */
  pageRows: number;
  /** Highest id read, or null for an empty page. */
  lastId: string | null;
}

/**
 * The walks over bridged rows that reconcile and playback make, in keyset pages over the primary
 * key (`id > $last ORDER BY id LIMIT n`), with "owed" decided by the SQL function `is_owed`
 * (migration 0007: commit order). Written for plans that do not depend on fresh statistics
 * (reconcile often runs right after a mass change, before autovacuum analyzed anything): each page
 * is a plain primary-key range with no filter on bridged_at, and the ledger lookup is a scalar
 * subquery on the full primary key of deliveries.
 */
export class OwedStore {
  private readonly s: string;

  constructor(readonly schema: string) {
    this.s = quoteIdent(schema);
  }

  /** A page of unbridged rows (id and channel only), for a dry run: nothing is claimed. */
  async unbridgedPage(
    db: Queryable,
    afterId: string,
    limit: number,
    channels: string[] | null,
    since: Date | null,
  ): Promise<{ id: string; channel: string }[]> {
    const res = await db.query<{ id: string; channel: string }>(
      // ORDER BY n.id, not id: the output column id is text and would sort as text.
      `SELECT n.id::text AS id, n.channel FROM ${this.s}.notifications n
        WHERE n.bridged_at IS NULL AND n.id > $1
          AND ($3::text[] IS NULL OR n.channel = ANY($3))
          AND ($4::timestamptz IS NULL OR n.created_at >= $4)
        ORDER BY n.id LIMIT $2`,
      [afterId, limit, channels, since],
    );
    return res.rows;
  }

  /**
   * `reconcile --verify`: one page of rows after `afterId` of `channels`, joined with the selected
   * consumers owed them and the ledger's outcome. Only bridged rows are owed here (unbridged ones
   * are the claim's business). Every row of the page appears at least once (consumer_id null when
   * nobody qualifies), so the caller's keyset moves on.
   */
  async owedPage(
    db: Queryable,
    params: {
      afterId: string;
      limit: number;
      channels: string[];
      consumers: string[];
      since: Date | null;
    },
  ): Promise<OwedPair[]> {
    const res = await db.query<OwedPair>(
      `SELECT p.id::text, p.channel, s.consumer_id,
              (SELECT d.status FROM ${this.s}.deliveries d
                WHERE d.consumer_id = s.consumer_id AND d.notification_id = p.id) AS status
         FROM (SELECT id, channel, bridged_at, xid FROM ${this.s}.notifications
                WHERE id > $1 AND channel = ANY($3::text[])
                  AND ($5::timestamptz IS NULL OR created_at >= $5)
                ORDER BY id LIMIT $2) p
         LEFT JOIN ${this.s}.subscriptions s
                ON p.bridged_at IS NOT NULL
               AND s.channel = p.channel AND s.consumer_id = ANY($4::text[])
               AND ${this.s}.is_owed(p.id, p.xid, s.after_id, s.boundary)
        ORDER BY p.id`,
      [params.afterId, params.limit, params.channels, params.consumers, params.since],
    );
    return res.rows;
  }

  /**
   * Locks (FOR UPDATE) and returns the subscriptions of `consumerId` whose playback is not
   * finished, optionally only of `channels`. Every playback page runs in a transaction that first
   * takes these locks: two `work` processes starting at once take turns page by page, each going
   * on from the cursor the other left, so nothing is played twice or skipped.
   */
  async pendingPlayback(
    db: Queryable,
    consumerId: string,
    channels: string[] | null,
  ): Promise<PendingPlayback[]> {
    const res = await db.query<PendingPlayback>(
      `SELECT channel, greatest(after_id, playback_cursor)::text AS from_id,
              playback_through_id::text AS through_id
         FROM ${this.s}.subscriptions
        WHERE consumer_id = $1 AND ($2::text[] IS NULL OR channel = ANY($2))
          AND greatest(after_id, playback_cursor) < playback_through_id
        ORDER BY channel
          FOR UPDATE`,
      [consumerId, channels],
    );
    return res.rows;
  }

  /**
   * One playback page: rows of `channels` in (fromId, throughId] that were bridged before the
   * consumer's subscription existed (so no job was made for it) and that it is owed.
   */
  async playbackPage(
    db: Queryable,
    params: {
      consumerId: string;
      channels: string[];
      fromId: string;
      throughId: string;
      limit: number;
      since: Date | null;
    },
  ): Promise<PlaybackPage> {
    const res = await db.query<NotificationRow & { owed: boolean }>(
      `SELECT p.id::text AS id, p.channel, s.consumer_id IS NOT NULL AS owed,
              CASE WHEN s.consumer_id IS NOT NULL THEN p.payload::text END AS payload,
              p.context::text AS context, p.created_at, p.key, p.traceparent, p.tracestate
         FROM (SELECT id, channel, payload, context, created_at, key, traceparent, tracestate,
                      bridged_at, xid
                 FROM ${this.s}.notifications
                WHERE id > $1 AND id <= $2 AND channel = ANY($3::text[])
                  AND ($6::timestamptz IS NULL OR created_at >= $6)
                ORDER BY id LIMIT $4) p
         LEFT JOIN ${this.s}.subscriptions s
                ON s.consumer_id = $5 AND s.channel = p.channel
               AND p.bridged_at < s.subscribed_at
               AND p.id > greatest(s.after_id, s.playback_cursor) AND p.id <= s.playback_through_id
               AND ${this.s}.is_owed(p.id, p.xid, s.after_id, s.boundary)
        ORDER BY p.id`,
      [
        params.fromId,
        params.throughId,
        params.channels,
        params.limit,
        params.consumerId,
        params.since,
      ],
    );
    return {
      rows: res.rows.filter((r) => r.owed).map(({ owed: _owed, ...row }) => row),
      pageRows: res.rows.length,
      lastId: res.rows.length > 0 ? res.rows[res.rows.length - 1].id : null,
    };
  }

  /** Moves the playback cursor of the consumer's `channels` to `throughId` (never backwards). */
  async advancePlayback(
    db: Queryable,
    consumerId: string,
    channels: string[],
    throughId: string,
  ): Promise<void> {
    await db.query(
      `UPDATE ${this.s}.subscriptions SET playback_cursor = least(playback_through_id, $3::bigint)
        WHERE consumer_id = $1 AND channel = ANY($2::text[]) AND playback_cursor < $3::bigint`,
      [consumerId, channels, throughId],
    );
  }
}
