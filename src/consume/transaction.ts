import type pg from 'pg';
import { createPool } from '../db/pool.js';
import { TransactionSql } from '../db/transactions.js';
import type { Logger } from '../log.js';
import { redactSecrets } from '../log.js';
import { errorMessage } from '../util.js';

/** How long past its `timeout` an attempt's transaction may sit idle before Postgres ends it. */
const IDLE_MARGIN_MS = 10_000;

/** Connections of the transactional pool beyond one per handler slot. */
const SPARE_CONNECTIONS = 2;

/**
 * The pool of transactional consumers' attempts: one connection per handler slot (each holds its
 * transaction for the whole attempt), plus a few, so that a slot never waits for a connection
 * another slot holds, and the ledger's own pool is never starved by long transactions.
 */
export function transactionPool(databaseUrl: string, slots: number, log: Logger): pg.Pool {
  return createPool(
    {
      connectionString: databaseUrl,
      max: slots + SPARE_CONNECTIONS,
      connectionTimeoutMillis: 10_000,
      application_name: 'pgq-bridge work (transactional)',
    },
    log,
  );
}

/** The handler returned, but its transaction had failed (an SQL error it caught): rolled back. */
export class TransactionAbortedError extends Error {
  constructor(consumerId: string) {
    super(
      `the transaction of ${consumerId}'s handler was aborted by an SQL error (caught by the ` +
        'handler?): rolled back, to be retried',
    );
    this.name = 'TransactionAbortedError';
  }
}

/** What {@link TransactionRunner.run} did. */
export type TransactionOutcome<T> =
  { ran: true; claimed: string[]; result: T } | { ran: false; claimed: [] };

/**
 * Runs the attempts of transactional consumers: one Postgres transaction per attempt, on a pool
 * of its own (sized for the consumers' concurrency), whose first statement claims the deliveries
 * in the ledger ({@link TransactionSql.begin}); the handler writes through the same client; the
 * COMMIT makes its writes and the ledger rows durable together. A throw, a timeout or a dead
 * process rolls both back.
 */
export class TransactionRunner {
  private readonly sql: TransactionSql;

  constructor(
    schema: string,
    private readonly pool: pg.Pool,
    private readonly log: Logger,
  ) {
    this.sql = new TransactionSql(schema);
  }

  /**
   * Claims `ids` for `consumerId` in a new transaction, runs `body` with the transaction's client
   * and the claimed ids (those the ledger did not record as completed), then commits. When
   * nothing is left to claim, rolls back at once and runs nothing. Rejects (after ROLLBACK) with
   * `body`'s error; rejects when Postgres cannot be reached or the COMMIT fails (the attempt is
   * then retried: a COMMIT that did land is found completed by the retry).
   */
  async run<T>(
    consumerId: string,
    ids: readonly string[],
    attempt: number,
    timeoutMs: number | undefined,
    body: (db: pg.PoolClient, claimed: string[]) => Promise<T>,
  ): Promise<TransactionOutcome<T>> {
    const client = await this.pool.connect();
    // A checked-out client has no pool 'error' listener: a connection dying mid-attempt (Postgres
    // restarted, the session killed by idle_in_transaction_session_timeout) must not crash us.
    let broken: Error | undefined;
    const onError = (error: Error): void => {
      broken = error;
    };
    client.on('error', onError);
    let open = false;
    try {
      open = true;
      const claimed = await this.sql.begin(client, consumerId, ids, attempt, {
        statementTimeoutMs: timeoutMs,
        idleTimeoutMs: timeoutMs === undefined ? 0 : timeoutMs + IDLE_MARGIN_MS,
      });
      if (claimed.length === 0) {
        await client.query('ROLLBACK');
        open = false;
        return { ran: false, claimed: [] };
      }
      const result = await body(client, claimed);
      open = false;
      const commit = await client.query('COMMIT');
      // Postgres answers COMMIT of a failed transaction (a statement error the handler caught)
      // with ROLLBACK, not an error: nothing was written, the ledger row neither.
      if (commit.command !== 'COMMIT') throw new TransactionAbortedError(consumerId);
      return { ran: true, claimed, result };
    } catch (error) {
      if (open) {
        await client.query('ROLLBACK').catch((rollbackError: unknown) => {
          // The connection is gone: Postgres rolled the transaction back itself.
          broken ??= rollbackError instanceof Error ? rollbackError : new Error('rollback failed');
        });
      }
      throw error;
    } finally {
      client.removeListener('error', onError);
      if (broken) {
        this.log.debug(
          { consumer: consumerId, err: redactSecrets(errorMessage(broken)) },
          'transaction connection discarded',
        );
      }
      client.release(broken);
    }
  }
}
