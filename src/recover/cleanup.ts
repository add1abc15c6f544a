import pg from 'pg';
import { sessionSettings } from '../db/pool.js';
import type { Settings } from '../config.js';
import { RecoveryStore } from '../db/recovery.js';
import { Store } from '../db/store.js';
import { UsageError } from '../errors.js';
import { redactSecrets, silentLogger, type Logger } from '../log.js';

/** Options of {@link cleanup}. */
export interface CleanupOptions {
  settings: Pick<Settings, 'databaseUrl' | 'schema'>;
  /** Delete notifications created more than this many days ago (may be fractional; 0 = all). */
  days: number;
  /** Count what would be deleted; delete nothing. */
  dryRun?: boolean;
  /**
   * Also delete old bridged rows whose deliveries are not all completed (pending, failed, or
   * not yet played back to a consumer). Unbridged rows are never deleted.
   */
  force?: boolean;
  /** Rows examined per transaction (default 1000): each transaction holds its locks briefly. */
  batchSize?: number;
  logger?: Logger;
  /** Stops between two batches when aborted. */
  signal?: AbortSignal;
}

/** What {@link cleanup} deleted (or, with `dryRun`, would delete). */
export interface CleanupResult {
  /** Bridged rows older than the cutoff that were examined. */
  scanned: number;
  /** Notifications deleted (would be, with `dryRun`). */
  deleted: number;
  /** Ledger rows (deliveries) deleted with them. */
  ledgerRowsDeleted: number;
  /** Old bridged rows kept because some delivery is not finished (0 with `force`). */
  kept: number;
  /** Rows created before this time were candidates. */
  cutoff: Date;
  dryRun: boolean;
  durationMs: number;
}

/**
 * Deletes bridged notifications older than `days` whose deliveries are all finished, with their
 * ledger rows. Finished: every consumer subscribed to the row's channel and owed it (id greater
 * than its subscription's `after_id`) has a `completed` outcome in the ledger. A failed delivery
 * (a dead letter) is not finished: its row stays so `reconcile --failed` can replay it, unless
 * `force`. Works in short transactions of `batchSize` rows along the primary key, so it never
 * locks the table for long; a dry run walks the same pages and counts.
 */
export async function cleanup(options: CleanupOptions): Promise<CleanupResult> {
  const { days } = options;
  if (typeof days !== 'number' || !Number.isFinite(days) || days < 0) {
    throw new UsageError(`days must be a number >= 0, got ${days}`);
  }
  const batchSize = options.batchSize ?? 1000;
  if (!Number.isInteger(batchSize) || batchSize < 1) {
    throw new UsageError(`batch-size must be a positive integer, got ${options.batchSize}`);
  }
  const log = options.logger ?? silentLogger();
  const dryRun = options.dryRun === true;
  const store = new Store(options.settings.schema);
  const recovery = new RecoveryStore(options.settings.schema);
  const client = new pg.Client({
    connectionString: options.settings.databaseUrl,
    connectionTimeoutMillis: 10_000,
    application_name: 'pgq-bridge cleanup',
    ...sessionSettings('reconcile'),
  });
  client.on('error', (error) =>
    log.warn({ err: redactSecrets(error.message) }, 'Postgres connection failed'),
  );
  await client.connect();
  const started = Date.now();
  try {
    const cutoff = await recovery.cutoff(client, days);
    const lastOld = await recovery.lastIdBefore(client, cutoff.text);
    const totals = { scanned: 0, deleted: 0, ledgerRowsDeleted: 0 };
    let afterId = '0';
    while (lastOld !== null && !options.signal?.aborted) {
      await client.query('BEGIN');
      let batch;
      try {
        await recovery.relaxCommit(client);
        // Shared subscriptions lock: a consumer registering now waits for this batch, so the
        // "every owed consumer completed" check cannot race a new subscription.
        if (!dryRun) await store.readSubscriptionsLocked(client);
        batch = await recovery.cleanupBatch(client, {
          afterId,
          cutoff: cutoff.text,
          limit: batchSize,
          force: options.force === true,
          dryRun,
        });
        await client.query('COMMIT');
      } catch (error) {
        await client.query('ROLLBACK').catch(() => undefined);
        throw error;
      }
      if (batch.lastId === null) break;
      afterId = batch.lastId;
      totals.scanned += batch.scanned;
      totals.deleted += batch.deleted;
      totals.ledgerRowsDeleted += batch.ledgerRows;
      log.debug({ ...batch, dryRun }, 'cleanup batch');
      // Past the last row older than the cutoff every row is newer: the walk ends there, so
      // cleanup costs the old part of the table, not all of it (a row committed meanwhile with
      // an old time and a higher id waits for the next run).
      if (batch.pageRows < batchSize || BigInt(afterId) >= BigInt(lastOld)) break;
    }
    const result: CleanupResult = {
      ...totals,
      kept: totals.scanned - totals.deleted,
      cutoff: cutoff.date,
      dryRun,
      durationMs: Date.now() - started,
    };
    log.debug(result, dryRun ? 'cleanup dry run finished' : 'cleanup finished');
    return result;
  } finally {
    await client.end().catch(() => undefined);
  }
}
