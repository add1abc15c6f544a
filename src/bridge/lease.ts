import type { Queryable, Store } from '../db/store.js';
import { redactSecrets, type Logger } from '../log.js';
import { errorMessage } from '../util.js';

/** Options of {@link WakeupLease}. */
export interface WakeupLeaseOptions {
  store: Store;
  db: Queryable;
  logger: Logger;
  /** How long one extension keeps writers from sending NOTIFY, in ms (default 1000). */
  leaseMs?: number;
  /** How long the listener keeps polling after its lease ended, in ms (default 200). */
  graceMs?: number;
  /**
   * Poll delay right after a batch that found rows, in ms (default 1: long enough for a few more
   * rows to commit, so batches are not one row each); doubles while polls come back empty.
   */
  minDelayMs?: number;
  /** Longest poll delay while the lease is live, in ms (default 20). */
  maxDelayMs?: number;
  /**
   * Rows per second below which the lease is not taken (default 200). Under that rate NOTIFY
   * costs writers little, and a wake-up is faster than a poll whose delay has grown.
   */
  minRate?: number;
}

/**
 * The listener's side of the wake-up lease (migration 0005): while it keeps finding rows it holds
 * the lease, so `notify()` skips the `pg_notify` whose commit-time lock serializes writers, and it
 * polls every few milliseconds instead of sleeping on NOTIFY.
 *
 * Timeline: rows arrive at `minRate` or more → extend the lease to now + `leaseMs` (an autocommit
 * UPDATE, at most twice per lease: only when less than half is left) → poll with a delay of `minDelayMs`, doubling to
 * `maxDelayMs` while polls find nothing → `graceMs` after the lease ended, go back to sleeping on
 * NOTIFY plus the safety poll. The local end is measured after the UPDATE returned, so it is never
 * earlier than the end Postgres compares against.
 *
 * Why the grace: a writer checks the lease inside its transaction and commits a little later. One
 * that checked just before the lease ended still commits, in practice, while the listener polls.
 * One whose transaction stayed open longer than the grace after the lease ended is bridged by the
 * safety poll: delayed, never lost.
 */
export class WakeupLease {
  private readonly leaseMs: number;
  private readonly graceMs: number;
  private readonly minDelayMs: number;
  private readonly maxDelayMs: number;
  /** The lease end as Postgres stored it (text keeps microseconds), while we may hold it. */
  private until: string | undefined;
  /** Local monotonic time (performance.now) at or after which the lease has surely ended. */
  private endsAt = -Infinity;
  private delayMs: number;
  private readonly minRate: number;
  /** Rows found since `markAt`, the last lease decision: the arrival rate is measured over it. */
  private rowsSinceMark = 0;
  private markAt = performance.now();
  private warned = false;
  /** An extension in flight (two batch lanes may both find it due). */
  private extending = false;
  /** Settles when the extension in flight (if any) has; release() waits for it. */
  private extension: Promise<void> | undefined;

  constructor(private readonly options: WakeupLeaseOptions) {
    this.leaseMs = options.leaseMs ?? 1000;
    this.graceMs = options.graceMs ?? 200;
    this.minDelayMs = options.minDelayMs ?? 1;
    this.maxDelayMs = options.maxDelayMs ?? 20;
    this.minRate = options.minRate ?? 200;
    this.delayMs = this.minDelayMs;
  }

  /** Whether the listener should be polling rather than sleeping on NOTIFY. */
  get isHot(): boolean {
    return performance.now() < this.endsAt + this.graceMs;
  }

  /**
   * Call after each batch with the number of rows it found: rows found reset the poll delay, and
   * when less than half of the lease is left (or none) the lease is extended if rows arrived at
   * `minRate` or more since the last decision. A failed extension is logged and leaves writers
   * sending NOTIFY, which costs speed, not rows.
   */
  async afterBatch(found: number): Promise<void> {
    if (found === 0) return;
    this.delayMs = this.minDelayMs;
    this.rowsSinceMark += found;
    const now = performance.now();
    if (this.extending || this.endsAt - now > this.leaseMs / 2) return;
    const rate = (this.rowsSinceMark * 1000) / Math.max(now - this.markAt, 1);
    this.rowsSinceMark = 0;
    this.markAt = now;
    if (rate < this.minRate) return;
    this.extending = true;
    const extension = this.options.store.extendWakeupLease(this.options.db, this.leaseMs);
    this.extension = extension.then(
      () => undefined,
      () => undefined,
    );
    try {
      this.until = await extension;
      this.endsAt = performance.now() + this.leaseMs;
    } catch (error) {
      if (!this.warned) {
        this.warned = true;
        this.options.logger.warn(
          { err: redactSecrets(errorMessage(error)) },
          'could not extend the wake-up lease (is the schema migrated?); writers keep sending NOTIFY',
        );
      }
    } finally {
      this.extending = false;
    }
  }

  /** How long to wait for a wake-up before the next poll: short while hot, else `idleMs`. */
  nextWaitMs(idleMs: number): number {
    if (!this.isHot) return idleMs;
    const delay = this.delayMs;
    this.delayMs = Math.min(Math.max(1, this.delayMs * 2), this.maxDelayMs);
    return delay;
  }

  /** Gives the lease up at once (on stop), unless another listener extended it since. */
  async release(): Promise<void> {
    // An extension still in flight would otherwise renew the lease after it was given up.
    await this.extension;
    const until = this.until;
    this.until = undefined;
    const held = performance.now() < this.endsAt;
    this.endsAt = -Infinity;
    if (until === undefined || !held) return;
    await this.options.store.releaseWakeupLease(this.options.db, until).catch(() => undefined);
  }
}
