import type { Store, DeliveryOutcome, Queryable } from '../db/store.js';
import { redactSecrets, type Logger } from '../log.js';
import { errorMessage } from '../util.js';

/**
 * Writes delivery outcomes to Postgres in batches: one statement per flush instead of one per job.
 * A flush happens when `maxBatch` outcomes wait or `flushIntervalMs` after the first one.
 * Failed flushes are kept and retried, so a Postgres blip loses no outcome while the process lives.
 */
export class LedgerWriter {
  private pending: DeliveryOutcome[] = [];
  /** Callers of {@link recordNow} whose outcome is in `pending`, resolved once it is written. */
  private waiting: (() => void)[] = [];
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

  /**
   * Queues an outcome and writes it at once (with whatever else waits, and right after a flush
   * in progress); resolves when it is in Postgres or was refused as bad data. For jobs BullMQ
   * removes as soon as they finish: completing one before its outcome is written would leave a
   * window where a crash loses both, and `reconcile --verify` would run it again.
   * While Postgres is unreachable it keeps waiting, as the retried flush does.
   */
  recordNow(outcome: DeliveryOutcome): Promise<void> {
    return new Promise((resolve) => {
      this.waiting.push(resolve);
      this.record(outcome);
      void this.flush();
    });
  }

  /**
   * Records a final outcome the way the job's removal setting needs (`removeOnComplete` for a
   * completion, `removeOnFail` for a failure): written before the job finishes when BullMQ
   * removes it at once ({@link removedAtOnce}), else group-committed with the next flush.
   */
  write(outcome: DeliveryOutcome, keep: unknown): Promise<void> | undefined {
    if (removedAtOnce(keep)) return this.recordNow(outcome);
    this.record(outcome);
    return undefined;
  }

  /** Writes everything queued so far; resolves when it is in Postgres (or the write failed). */
  async flush(): Promise<void> {
    clearTimeout(this.timer);
    this.timer = undefined;
    while (this.flushing) await this.flushing;
    if (this.pending.length === 0) return;
    const batch = this.pending;
    const waiting = this.waiting;
    this.pending = [];
    this.waiting = [];
    this.flushing = this.store
      .recordOutcomes(this.db, batch)
      .catch((error: unknown) =>
        // A data error would fail every retry of the batch and block every later outcome:
        // write the batch one by one instead, and drop only what Postgres refuses.
        isDataError(error) ? this.recordOneByOne(batch) : Promise.reject(error),
      )
      .then(() => {
        for (const resolve of waiting) resolve();
      })
      .catch((error: unknown) => {
        // Keep them for the next flush; outcomes are idempotent upserts.
        this.pending = batch.concat(this.pending);
        this.waiting = waiting.concat(this.waiting);
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

/**
 * Whether BullMQ removes a finished job at once under this `removeOnComplete`/`removeOnFail`:
 * `true`, `0`, or `{ count: 0 }` / `{ age: 0 }`. Then its outcome must reach the ledger first
 * ({@link LedgerWriter.recordNow}). Other settings keep it until newer jobs or its age push it
 * out: a count well above the jobs finished in 100 ms outlives the 50 ms flush.
 */
export function removedAtOnce(keep: unknown): boolean {
  if (keep === true || keep === 0) return true;
  if (typeof keep !== 'object' || keep === null) return false;
  const { count, age } = keep as { count?: unknown; age?: unknown };
  return count === 0 || age === 0;
}
