import pg from 'pg';
import { quoteIdent } from '../identifiers.js';

/** How one transactional attempt's transaction is bounded. */
export interface TransactionLimits {
  /** The consumer's `timeout` (ms): `statement_timeout` of every statement in it. */
  statementTimeoutMs: number | undefined;
  /**
   * `idle_in_transaction_session_timeout` (ms): Postgres ends the session (and rolls the
   * transaction back) when it sits idle this long, e.g. a frozen process holding the row locks.
   * 0 disables it.
   */
  idleTimeoutMs: number;
}

/**
 * The SQL of transactional consumers (docs/transactional.md): the ledger row of a delivery is
 * written as the first statement of the attempt's transaction, so it commits with the handler's
 * writes or rolls back with them, and its row lock makes a second run of the same delivery wait.
 */
export class TransactionSql {
  private readonly s: string;

  constructor(schema: string) {
    this.s = quoteIdent(schema);
  }

  /**
   * Opens the attempt's transaction on `client` and claims the deliveries of `ids` for
   * `consumerId`, in one round trip: BEGIN, the limits (SET LOCAL), and an upsert of each
   * delivery as completed, unless the ledger already says completed (or 'skipped': given up with
   * `pgq-bridge consumers skip`, as final). Returns the claimed ids (in id order); the ones left
   * out were finished before, and the caller runs nothing for them.
   *
   * Why an upsert first: the row it inserts or locks (ON CONFLICT DO UPDATE locks the row even
   * when its WHERE is false) is held until COMMIT or ROLLBACK, so a concurrent run of the same
   * delivery (a stalled restart, a duplicate job, another process) blocks right here until this
   * one ends, then sees the outcome: skipped when it committed, claimed when it rolled back.
   * Rows are locked in id order, so two overlapping batches do not deadlock.
   *
   * Sent as one simple-protocol query (no parameters), so every value is checked and inlined as
   * an escaped literal: ids must be positive integers, limits non-negative integers.
   */
  async begin(
    client: pg.PoolClient,
    consumerId: string,
    ids: readonly string[],
    attempt: number,
    limits: TransactionLimits,
  ): Promise<string[]> {
    for (const id of ids) {
      if (!/^[1-9][0-9]{0,18}$/.test(id)) throw new RangeError(`bad notification id ${id}`);
    }
    const ms = (value: number): string => {
      if (!Number.isInteger(value) || value < 0) throw new RangeError(`bad timeout ${value}`);
      return `'${value}ms'`;
    };
    if (!Number.isInteger(attempt) || attempt < 1) throw new RangeError(`bad attempt ${attempt}`);
    const statements = ['BEGIN'];
    if (limits.statementTimeoutMs !== undefined) {
      statements.push(`SET LOCAL statement_timeout = ${ms(limits.statementTimeoutMs)}`);
    }
    statements.push(`SET LOCAL idle_in_transaction_session_timeout = ${ms(limits.idleTimeoutMs)}`);
    statements.push(
      `INSERT INTO ${this.s}.deliveries AS d (consumer_id, notification_id, status, attempts, last_error)
       SELECT ${pg.escapeLiteral(consumerId)}, id, 'completed', ${attempt}, NULL
         FROM unnest('{${ids.join(',')}}'::bigint[]) AS id ORDER BY id
       ON CONFLICT (consumer_id, notification_id) DO UPDATE
         SET status = 'completed', attempts = EXCLUDED.attempts, last_error = NULL,
             finished_at = clock_timestamp()
         WHERE d.status NOT IN ('completed', 'skipped')
       RETURNING notification_id::text AS id`,
    );
    const results = (await client.query(statements.join(';\n'))) as unknown as pg.QueryResult[];
    const claimed = results[results.length - 1].rows as { id: string }[];
    return claimed.map((r) => r.id).sort((a, b) => (BigInt(a) < BigInt(b) ? -1 : 1));
  }
}
