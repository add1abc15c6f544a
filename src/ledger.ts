import type { Store, DeliveryOutcome, Queryable } from './db/store.js';
import { redactSecrets, type Logger } from './log.js';
import { errorMessage } from './util.js';

/**
 * Writes delivery outcomes to Postgres in batches: one statement per flush instead of one per job.
 * A flush happens when `maxBatch` outcomes wait or `flushIntervalMs` after the first one.
 * Failed flushes are kept and retried, so a Postgres blip loses no outcome while the process lives.
 */
export class LedgerWriter {
  private pending: DeliveryOutcome[] = [];
  private timer: NodeJS.Timeout | undefined;
  private flushing: Promise<void> | undefined;

  constructor(
    private readonly store: Store,
    private readonly db: Queryable,
    private readonly log: Logger,
    private readonly flushIntervalMs = 50,
    private readonly maxBatch = 1000,
  ) {}

  /** Queues an outcome for the next flush. */
  record(outcome: DeliveryOutcome): void {
    // Postgres text cannot hold NUL characters; an error message may.
    if (outcome.lastError?.includes('\u0000')) {
      outcome = { ...outcome, lastError: outcome.lastError.replaceAll('\u0000', '') };
    }
    this.pending.push(outcome);
    if (this.pending.length >= this.maxBatch) void this.flush();
    else this.timer ??= setTimeout(() => void this.flush(), this.flushIntervalMs);
  }

  /** Writes everything queued so far; resolves when it is in Postgres (or the write failed). */
  async flush(): Promise<void> {
    clearTimeout(this.timer);
    this.timer = undefined;
    while (this.flushing) await this.flushing;
    if (this.pending.length === 0) return;
    const batch = this.pending;
    this.pending = [];
    this.flushing = this.store
      .recordOutcomes(this.db, batch)
      .catch((error: unknown) =>
        // A data error would fail every retry of the batch and block every later outcome:
        // write the batch one by one instead, and drop only what Postgres refuses.
        isDataError(error) ? this.recordOneByOne(batch) : Promise.reject(error),
      )
      .catch((error: unknown) => {
        // Keep them for the next flush; outcomes are idempotent upserts.
        this.pending = batch.concat(this.pending);
        this.log.warn(
          { err: redactSecrets(errorMessage(error)), outcomes: batch.length },
          'writing the delivery ledger failed; will retry',
        );
        this.timer ??= setTimeout(() => void this.flush(), 1000);
      })
      .finally(() => {
        this.flushing = undefined;
      });
    await this.flushing;
  }

  private async recordOneByOne(batch: DeliveryOutcome[]): Promise<void> {
    for (let i = 0; i < batch.length; i++) {
      try {
        await this.store.recordOutcomes(this.db, [batch[i]]);
      } catch (error) {
        // Postgres went away meanwhile: the whole batch is kept for the next flush (the
        // outcomes written so far are idempotent upserts).
        if (!isDataError(error)) throw error;
        this.log.error(
          { err: redactSecrets(errorMessage(error)), outcome: batch[i] },
          'the delivery ledger refused an outcome; dropped it',
        );
      }
    }
  }

  /** Outcomes not yet written. */
  get size(): number {
    return this.pending.length;
  }

  /** Stops the timer (after a final flush by the caller). */
  close(): void {
    clearTimeout(this.timer);
    this.timer = undefined;
  }
}

/** Postgres data exceptions (22xxx) and integrity violations (23xxx): retrying cannot help. */
function isDataError(error: unknown): boolean {
  const code = (error as { code?: unknown } | null)?.code;
  return typeof code === 'string' && (code.startsWith('22') || code.startsWith('23'));
}
