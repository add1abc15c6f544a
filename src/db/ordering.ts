import { quoteIdent } from '../identifiers.js';
import type { Queryable } from './store.js';

/** What a dead letter does to the later notifications of its key (docs/ordering.md). */
export type DeadLetterMode = 'block' | 'skip';

/** One notification asking whether its turn has come. */
export interface KeyedDelivery {
  id: string;
  key: string;
}

/** The notification owed just before a keyed delivery, and whether it is finished. */
export interface Predecessor {
  /** Its id; null when the delivery is the first owed of its key. */
  id: string | null;
  /** Its ledger status (null: no outcome yet). */
  status: string | null;
}

/** Blocked keys of one ordered consumer (`onDeadLetter: 'block'`), for status and the board. */
export interface BlockedKeys {
  consumerId: string;
  /** Keys whose head is a dead letter. */
  blockedKeys: number;
  /** The oldest such head: its key, notification id, when it failed and why. */
  oldest: { key: string; notificationId: string; failedAt: Date; lastError: string | null } | null;
}

/** Ledger statuses after which the next notification of a key may start. */
export function finishedStatuses(mode: DeadLetterMode): string[] {
  // 'skipped': given up with `pgq-bridge consumers skip` (migration 0008).
  return mode === 'skip' ? ['completed', 'skipped', 'failed'] : ['completed', 'skipped'];
}

/**
 * The SQL of ordered delivery: who comes before and after a notification within its key, for one
 * consumer, and which keys are blocked. "Owed" is the consumer's subscriptions' rule (channel and
 * `after_id`), so a key's notifications on a channel the consumer does not read never hold it up.
 */
export class OrderingSql {
  private readonly s: string;

  constructor(schema: string) {
    this.s = quoteIdent(schema);
  }

  /** The owed-notifications join: `n` rows of the consumer `$1`'s subscribed channels. */
  private owed(): string {
    return `${this.s}.notifications n
       JOIN ${this.s}.subscriptions s
         ON s.consumer_id = $1 AND s.channel = n.channel AND n.id > s.after_id`;
  }

  /**
   * For each delivery: the notification owed right before it with the same key, with its ledger
   * status. One statement for any number of deliveries; each is one backward step on
   * `notifications_key_idx` and one primary-key probe of the ledger.
   *
   * Why only the previous one, not every earlier one: ordering itself keeps the invariant that a
   * notification finishes only after every earlier one of its key finished, so the previous one
   * being finished says the same as all of them being finished, at a constant cost instead of
   * one that grows with the key's history (docs/ordering.md, "Exact semantics").
   */
  async predecessors(
    db: Queryable,
    consumerId: string,
    items: readonly KeyedDelivery[],
  ): Promise<Map<string, Predecessor>> {
    const result = new Map<string, Predecessor>();
    if (items.length === 0) return result;
    const res = await db.query<{ id: string; prev_id: string | null; prev_status: string | null }>(
      `SELECT q.id::text AS id, p.id::text AS prev_id,
              (SELECT d.status FROM ${this.s}.deliveries d
                WHERE d.consumer_id = $1 AND d.notification_id = p.id) AS prev_status
         FROM unnest($2::bigint[], $3::text[]) AS q(id, key)
         LEFT JOIN LATERAL (
           SELECT n.id FROM ${this.owed()}
            WHERE n.key = q.key AND n.id < q.id
            ORDER BY n.id DESC LIMIT 1) p ON true`,
      [consumerId, items.map((i) => i.id), items.map((i) => i.key)],
    );
    for (const row of res.rows) result.set(row.id, { id: row.prev_id, status: row.prev_status });
    return result;
  }

  /** For each delivery: the id of the notification owed right after it with the same key. */
  async successors(
    db: Queryable,
    consumerId: string,
    items: readonly KeyedDelivery[],
  ): Promise<Map<string, string>> {
    const result = new Map<string, string>();
    if (items.length === 0) return result;
    const res = await db.query<{ id: string; next_id: string }>(
      `SELECT q.id::text AS id, x.id::text AS next_id
         FROM unnest($2::bigint[], $3::text[]) AS q(id, key)
         CROSS JOIN LATERAL (
           SELECT n.id FROM ${this.owed()}
            WHERE n.key = q.key AND n.id > q.id
            ORDER BY n.id LIMIT 1) x`,
      [consumerId, items.map((i) => i.id), items.map((i) => i.key)],
    );
    for (const row of res.rows) result.set(row.id, row.next_id);
    return result;
  }

  /**
   * The notification owed right after `notificationId` with the same key, for an ordered
   * consumer; null when there is none, the notification has no key or the consumer is not
   * ordered. For `consumers skip`, which knows only the id.
   */
  async successorOfId(
    db: Queryable,
    consumerId: string,
    notificationId: string,
  ): Promise<string | null> {
    const res = await db.query<{ next_id: string }>(
      `SELECT x.id::text AS next_id
         FROM ${this.s}.notifications q
         JOIN ${this.s}.consumers c ON c.id = $1 AND c.ordered IS NOT NULL
         CROSS JOIN LATERAL (
           SELECT n.id FROM ${this.owed()}
            WHERE n.key = q.key AND n.id > q.id
            ORDER BY n.id LIMIT 1) x
        WHERE q.id = $2 AND q.key IS NOT NULL`,
      [consumerId, notificationId],
    );
    return res.rows[0]?.next_id ?? null;
  }

  /** Records how each consumer orders its deliveries (NULL: not ordered). */
  async setOrdering(
    db: Queryable,
    consumers: readonly { id: string; ordered: DeadLetterMode | null }[],
  ): Promise<void> {
    if (consumers.length === 0) return;
    await db.query(
      `UPDATE ${this.s}.consumers c SET ordered = u.ordered
         FROM unnest($1::text[], $2::text[]) AS u(id, ordered)
        WHERE c.id = u.id AND c.ordered IS DISTINCT FROM u.ordered`,
      [consumers.map((c) => c.id), consumers.map((c) => c.ordered)],
    );
  }

  /** Every ordered consumer's mode, with the blocked keys of those in `'block'` mode. */
  async orderingOfConsumers(
    db: Queryable,
  ): Promise<Map<string, { mode: DeadLetterMode; blocked?: BlockedKeys }>> {
    const [modes, blocked] = await Promise.all([
      db.query<{ id: string; ordered: DeadLetterMode }>(
        `SELECT id, ordered FROM ${this.s}.consumers WHERE ordered IS NOT NULL`,
      ),
      this.blockedKeys(db),
    ]);
    const byId = new Map(blocked.map((b) => [b.consumerId, b]));
    return new Map(modes.rows.map((r) => [r.id, { mode: r.ordered, blocked: byId.get(r.id) }]));
  }

  /** Up to `limit` blocked heads (oldest first) of every `'block'` consumer, for the board. */
  async blockedHeads(
    db: Queryable,
    limit: number,
  ): Promise<
    {
      consumerId: string;
      key: string;
      notificationId: string;
      failedAt: Date;
      lastError: string | null;
    }[]
  > {
    const res = await db.query<{
      consumer_id: string;
      key: string;
      notification_id: string;
      finished_at: Date;
      last_error: string | null;
    }>(
      `SELECT d.consumer_id, n.key, d.notification_id::text AS notification_id, d.finished_at,
              d.last_error
         FROM ${this.s}.deliveries d
         JOIN ${this.s}.consumers c ON c.id = d.consumer_id AND c.ordered = 'block'
         JOIN ${this.s}.notifications n ON n.id = d.notification_id AND n.key IS NOT NULL
        WHERE d.status = 'failed'
        ORDER BY d.consumer_id, d.notification_id
        LIMIT $1`,
      [limit],
    );
    return res.rows.map((r) => ({
      consumerId: r.consumer_id,
      key: r.key,
      notificationId: r.notification_id,
      failedAt: r.finished_at,
      lastError: r.last_error,
    }));
  }

  /**
   * Every consumer ordered with `onDeadLetter: 'block'`, with the keys its dead letters block.
   * A keyed dead letter of such a consumer is always the head of its key (nothing later of the
   * key ran after it), so counting them is counting blocked keys. Reads the ledger's partial
   * index of failed deliveries.
   */
  async blockedKeys(db: Queryable): Promise<BlockedKeys[]> {
    const res = await db.query<{
      consumer_id: string;
      blocked_keys: number;
      key: string | null;
      notification_id: string | null;
      failed_at: Date | null;
      last_error: string | null;
    }>(
      `SELECT c.id AS consumer_id, coalesce(b.blocked_keys, 0)::int AS blocked_keys,
              o.key, o.notification_id::text AS notification_id, o.finished_at AS failed_at,
              o.last_error
         FROM ${this.s}.consumers c
         LEFT JOIN LATERAL (
           SELECT count(DISTINCT n.key) AS blocked_keys
             FROM ${this.s}.deliveries d JOIN ${this.s}.notifications n ON n.id = d.notification_id
            WHERE d.consumer_id = c.id AND d.status = 'failed' AND n.key IS NOT NULL) b ON true
         LEFT JOIN LATERAL (
           SELECT n.key, d.notification_id, d.finished_at, d.last_error
             FROM ${this.s}.deliveries d JOIN ${this.s}.notifications n ON n.id = d.notification_id
            WHERE d.consumer_id = c.id AND d.status = 'failed' AND n.key IS NOT NULL
            ORDER BY d.notification_id LIMIT 1) o ON true
        WHERE c.ordered = 'block'
        ORDER BY c.id`,
    );
    return res.rows.map((r) => ({
      consumerId: r.consumer_id,
      blockedKeys: r.blocked_keys,
      oldest:
        r.key !== null && r.notification_id !== null && r.failed_at !== null
          ? {
              key: r.key,
              notificationId: r.notification_id,
              failedAt: r.failed_at,
              lastError: r.last_error,
            }
          : null,
    }));
  }
}
