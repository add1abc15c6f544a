/**
 * Handler slots of one consumer in one process: at most `size` handler calls at once, the others
 * wait their turn in arrival order.
 *
 * Why a second limit beside BullMQ's `concurrency`: before its handler may run, a job waits for
 * the ledger's answer (one batched Postgres round trip, see {@link CompletedLookup}). If BullMQ's
 * concurrency were the handler limit, every slot would sit idle through that wait and the drain
 * would lose a third of raw BullMQ's rate. So BullMQ fetches {@link fetchSlotsFor} jobs, the
 * lookups of the extra ones overlap the running handlers, and this limit keeps the consumer's
 * `concurrency` what the user set: the number of handlers running at once.
 */
export class Slots {
  private free: number;
  private readonly queue: (() => void)[] = [];

  constructor(readonly size: number) {
    this.free = size;
  }

  /** Waits for a free slot; resolves with the function that gives it back (call it once). */
  async acquire(): Promise<() => void> {
    if (this.free > 0) this.free--;
    else await new Promise<void>((resolve) => this.queue.push(resolve));
    let released = false;
    return () => {
      if (released) return;
      released = true;
      const next = this.queue.shift();
      if (next) next();
      else this.free++;
    };
  }

  /** Handler calls running now. */
  get busy(): number {
    return this.size - this.free;
  }
}

/**
 * How many jobs BullMQ may hold for a consumer whose handlers run `concurrency` at once: twice
 * that, so one job's ledger lookup overlaps another's handler (measured: bench/drain.ts, see
 * docs/performance.md), and at least 2, so even a one-at-a-time consumer has its next job's
 * answer ready when the handler returns.
 */
export function fetchSlotsFor(concurrency: number): number {
  return Math.max(2, concurrency * 2);
}
