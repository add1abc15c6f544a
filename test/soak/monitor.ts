/**
 * Measures recovery after each fault, by polling Postgres and Redis directly (not through the
 * proxies, so a cut path does not blind it) every half second.
 *
 * For a fault that ended at time E, when the newest stored notification id was X:
 * - flowing: the first handling (by any consumer) of a notification with id > X, at or after E
 *   (new work is flowing again);
 * - drained: the first poll at which every (consumer, notification ≤ X) it is owed (the database's
 *   rule, `<schema>.is_owed`: commit visibility against the subscription's boundary) is handled,
 *   or parked: its job is gone from Redis (a Redis restart lost it: the final
 *   `reconcile --verify` brings it back) or failed for good (the final `reconcile --failed`).
 *   No row ≤ X is unbridged and no job ≤ X waits, runs or is delayed.
 */
import type { Fault } from './chaos.js';
import type { Stack } from './stack.js';

/** Recovery figures of one fault. */
export interface Recovery {
  fault: Fault;
  /** Newest notification id when the fault ended. */
  lastIdAtEnd: string | undefined;
  /** Seconds from the fault's end to the first new handling. */
  flowingAfterS?: number;
  /** Seconds from the fault's end until everything owed up to `lastIdAtEnd` was handled or parked. */
  drainedAfterS?: number;
  /** Pairs ≤ lastIdAtEnd parked (job lost or failed) when it drained. */
  parkedAtDrain?: number;
  /**
   * An earlier fault had not drained yet when this one started: its drain time then covers both
   * (the monitor cannot tell whose pending pair it is).
   */
  overlapped: boolean;
}

/** A (consumer, notification) the monitor found without a handling and without a live job. */
interface Parked {
  consumer: string;
  id: bigint;
  why: 'lost' | 'failed';
}

/** Progress figures of the last poll. */
export interface Snapshot {
  at: number;
  maxId: bigint;
  unbridged: number;
  handled: number;
  pending: number;
  parked: number;
}

const POLL_MS = 500;

/** Polls in the background; `track(fault)` adds a fault to measure. */
export class RecoveryMonitor {
  readonly recoveries: Recovery[] = [];
  last: Snapshot | undefined;
  private readonly parked = new Map<string, Parked>();
  /** Every pair with a notification id ≤ lowWater is handled or parked. */
  private lowWater = 0n;
  private timer: NodeJS.Timeout | undefined;
  private polling: Promise<void> | undefined;
  private stopped = false;

  constructor(private readonly stack: Stack) {}

  start(): void {
    const loop = async (): Promise<void> => {
      if (this.stopped) return;
      this.polling = this.poll().catch(() => undefined);
      await this.polling;
      if (!this.stopped) this.timer = setTimeout(() => void loop(), POLL_MS);
    };
    void loop();
  }

  async stop(): Promise<void> {
    this.stopped = true;
    clearTimeout(this.timer);
    await this.polling;
  }

  /** Starts measuring the recovery from `fault` (call when it is over). */
  async track(fault: Fault): Promise<void> {
    const overlapped = this.recoveries.some(
      (r) =>
        r.drainedAfterS === undefined || r.fault.endedAt + r.drainedAfterS * 1000 > fault.startedAt,
    );
    const recovery: Recovery = { fault, lastIdAtEnd: undefined, overlapped };
    this.recoveries.push(recovery);
    for (let i = 0; i < 20 && recovery.lastIdAtEnd === undefined; i++) {
      try {
        const { rows } = await this.stack.pool.query<{ id: string | null }>(
          `SELECT max(id)::text AS id FROM ${this.stack.schema}.notifications`,
        );
        recovery.lastIdAtEnd = rows[0].id ?? '0';
      } catch {
        await new Promise((resolve) => setTimeout(resolve, 250));
      }
    }
  }

  /** Whether every fault tracked so far has drained. */
  settled(): boolean {
    return this.recoveries.every((r) => r.drainedAfterS !== undefined);
  }

  /** Parked pairs by reason. */
  parkedCounts(): { lost: number; failed: number } {
    let lost = 0;
    let failed = 0;
    for (const p of this.parked.values()) {
      if (p.why === 'lost') lost++;
      else failed++;
    }
    return { lost, failed };
  }

  private async poll(): Promise<void> {
    const { pool, schema, soakSchema } = this.stack;
    const now = Date.now();
    const head = await pool.query<{
      max: string | null;
      unbridged: number;
      min_unbridged: string | null;
      handled: number;
    }>(
      `SELECT (SELECT max(id) FROM ${schema}.notifications)::text AS max,
              (SELECT count(*) FROM ${schema}.notifications WHERE bridged_at IS NULL)::int AS unbridged,
              (SELECT min(id) FROM ${schema}.notifications WHERE bridged_at IS NULL)::text AS min_unbridged,
              (SELECT count(*) FROM ${soakSchema}.handled)::int AS handled`,
    );
    const maxId = BigInt(head.rows[0].max ?? '0');
    const minUnbridged =
      head.rows[0].min_unbridged === null ? null : BigInt(head.rows[0].min_unbridged);

    // Pairs owed and not handled, among bridged rows above the low-water mark.
    const open = await pool.query<{ consumer_id: string; id: string }>(
      `SELECT s.consumer_id, n.id::text AS id
         FROM ${schema}.notifications n
         JOIN ${schema}.subscriptions s ON s.channel = n.channel
          AND ${schema}.is_owed(n.id, n.xid, s.after_id, s.boundary)
        WHERE n.id > $1 AND n.bridged_at IS NOT NULL
          AND NOT EXISTS (SELECT 1 FROM ${soakSchema}.handled h
                           WHERE h.consumer = s.consumer_id AND h.notification_id = n.id)
        ORDER BY n.id LIMIT 5000`,
      [this.lowWater.toString()],
    );
    const candidates = open.rows.filter((r) => !this.parked.has(`${r.consumer_id}:${r.id}`));
    let minPending: bigint | null = null;
    let pending = 0;
    if (candidates.length > 0) {
      const pipeline = this.stack.redisClient.pipeline();
      for (const r of candidates) {
        const key = `${this.stack.prefix}:${r.consumer_id}:n${r.id}`;
        pipeline.hmget(key, 'data', 'finishedOn', 'returnvalue');
      }
      const replies = await pipeline.exec();
      if (!replies) return;
      candidates.forEach((r, i) => {
        const [error, value] = replies[i];
        if (error) throw error;
        const [data, finishedOn, returnvalue] = value as Array<string | null>;
        const id = BigInt(r.id);
        const key = `${r.consumer_id}:${r.id}`;
        if (data === null) {
          this.parked.set(key, { consumer: r.consumer_id, id, why: 'lost' });
        } else if (finishedOn === null) {
          pending++;
          if (minPending === null || id < minPending) minPending = id;
        } else if (returnvalue === null) {
          // Finished without a result: failed for good (e.g. stalled twice), never handled.
          this.parked.set(key, { consumer: r.consumer_id, id, why: 'failed' });
        }
        // Else completed just after the query above: its handling is recorded by now.
      });
    }
    // A later poll may find a row handled that this one saw pending; the low-water mark only
    // moves past what is surely settled.
    const scannedAll = open.rows.length < 5000;
    let settledThrough = scannedAll ? maxId : BigInt(open.rows[open.rows.length - 1].id) - 1n;
    if (minUnbridged !== null && minUnbridged - 1n < settledThrough)
      settledThrough = minUnbridged - 1n;
    if (minPending !== null && minPending - 1n < settledThrough) settledThrough = minPending - 1n;
    if (settledThrough > this.lowWater) this.lowWater = settledThrough;

    this.last = {
      at: now,
      maxId,
      unbridged: head.rows[0].unbridged,
      handled: head.rows[0].handled,
      pending,
      parked: this.parked.size,
    };

    for (const r of this.recoveries) {
      if (r.lastIdAtEnd === undefined) continue;
      const x = BigInt(r.lastIdAtEnd);
      if (r.flowingAfterS === undefined) {
        const first = await pool.query<{ at: Date | null }>(
          `SELECT min(handled_at) AS at FROM ${soakSchema}.handled
            WHERE notification_id > $1 AND handled_at >= to_timestamp($2 / 1000.0)`,
          [r.lastIdAtEnd, r.fault.endedAt],
        );
        const at = first.rows[0].at;
        if (at) r.flowingAfterS = Math.max(0, (at.getTime() - r.fault.endedAt) / 1000);
      }
      if (r.drainedAfterS === undefined && this.lowWater >= x) {
        r.drainedAfterS = Math.max(0, (now - r.fault.endedAt) / 1000);
        r.parkedAtDrain = [...this.parked.values()].filter((p) => p.id <= x).length;
      }
    }
  }
}
