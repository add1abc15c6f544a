import type { ClaimBoundary } from '../db/bridge-sql.js';
import { PgqError } from '../errors.js';
import type { Logger } from '../log.js';
import { runBatch, type BatchContext, type BatchResult } from './batch.js';
import { claimLimitFor } from './plan.js';

/** What the listener's claims depend on. */
interface ClaimerOptions {
  batchSize: number;
  channels: string[] | null;
  log: Logger;
}

/**
 * The listener's side of the bridging routine: how many rows each claim takes, and from where.
 *
 * Size: the listener's batch size, or a batch consumer's larger batch size ({@link claimLimitFor});
 * cut to a quarter after an enqueue timeout (a Redis that hangs on a big batch may take a small
 * one) and doubled back with every batch that went in.
 *
 * Start (`--skip-playback`): rows committed after the listener started, in commit order: above the
 * start's max id, or below it from a transaction the start's snapshot did not see.
 */
export class Claimer {
  /** Rows per claim when Redis keeps up. */
  private limit: number;
  /** Rows per claim now. */
  private now: number;
  private throttled = false;
  private after: ClaimBoundary | null = null;

  constructor(
    private readonly ctx: BatchContext,
    private readonly options: ClaimerOptions,
    private readonly onBridged: (batch: BatchResult) => void,
  ) {
    this.limit = options.batchSize;
    this.now = options.batchSize;
  }

  /** Claim only rows committed after `boundary` from now on. */
  startAfter(boundary: ClaimBoundary): void {
    this.after = boundary;
  }

  /**
   * Once every transaction the start's snapshot could not see has ended, the snapshot test can
   * go (the claim then walks only the ids above the start), so old unbridged rows left for others
   * stop costing each claim a look at their transaction.
   */
  async settleBoundary(): Promise<void> {
    const snapshot = this.after?.snapshot;
    if (!this.after || !snapshot) return;
    if (!(await this.ctx.store.boundarySettled(this.ctx.pool, snapshot))) return;
    // One more claim with the snapshot test: the last late rows committed before the check.
    await this.bridgeOnce();
    this.after = { maxId: this.after.maxId, snapshot: null };
    this.options.log.debug({ afterId: this.after.maxId }, 'start boundary settled');
  }

  /**
   * One batch through the bridging routine (src/bridge/batch.ts): claim and mark rows, enqueue
   * their jobs, commit. If anything fails the transaction rolls back and the rows are claimable
   * again; jobs already added are deduplicated by id. Resolves with the number of rows bridged.
   */
  async bridgeOnce(): Promise<number> {
    const started = Date.now();
    let result: BatchResult;
    try {
      result = await runBatch(this.ctx, {
        rows: {
          claim: {
            limit: this.now,
            channels: this.options.channels,
            since: null,
            after: this.after,
          },
        },
        replay: false,
        consumers: null,
      });
    } catch (error) {
      if (error instanceof PgqError && error.code === 'PGQ_TIMEOUT') {
        const was = this.now;
        this.now = Math.max(1, Math.floor(this.now / 4));
        this.throttled = true;
        this.options.log.warn(
          { claimLimit: this.now, was },
          'Redis did not take the batch in time: connection dropped, smaller claims until it does',
        );
      }
      throw error;
    }
    this.limit = claimLimitFor(this.options.batchSize, result.subscriptions);
    this.now = this.throttled ? Math.min(this.limit, this.now * 2) : this.limit;
    this.throttled = this.now < this.limit;
    const { rows, jobs } = result;
    if (rows.length > 0) {
      this.options.log.debug(
        { rows: rows.length, jobs, firstId: rows[0].id, ms: Date.now() - started },
        'batch bridged',
      );
      this.onBridged(result);
    }
    return rows.length;
  }
}
