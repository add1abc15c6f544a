import type { Queue } from 'bullmq';
import { openConsumerQueue, type QueueLayoutSettings } from '../queue-layout.js';
import type { RedisConnection } from '../redis.js';
import type { PlannedJob } from './plan.js';
import type { PlannedBatchJob } from './pack.js';
import { PgqError } from '../errors.js';

/** Options of {@link QueueSet.addAll}. */
export interface AddOptions {
  /** Fail (and abandon the connection, see {@link QueueSet.addAll}) after this long. */
  timeoutMs: number;
  /**
   * Jobs per `addBulk` call, one call after another per queue (default: all in one call). Each call
   * is one MULTI that Redis runs without serving anyone else; reconcile adds a million jobs in
   * small calls so the workers' commands keep flowing.
   */
  chunk?: number;
}

/**
 * One BullMQ Queue per consumer, on a Redis connection of its own that it can throw away: when
 * Redis hangs (not errors) during an add, the connection is disconnected, which rejects every
 * command still queued in the client instead of letting it replay when Redis wakes up.
 */
export class QueueSet {
  private readonly queues = new Map<string, Queue>();
  private redis: RedisConnection | undefined;
  /** Connections given up on; closed when {@link close} runs (their sockets are already gone). */
  private abandoned = 0;

  /**
   * @param connect opens a fresh connection (called lazily, and again after {@link abandon})
   */
  constructor(
    private readonly connect: () => RedisConnection,
    /** Decides each queue's key prefix (one hash tag per queue on a Redis Cluster). */
    readonly layout: QueueLayoutSettings,
  ) {}

  /** The connection the queues use now. */
  connection(): RedisConnection {
    this.redis ??= this.connect();
    return this.redis;
  }

  get(consumerId: string): Queue {
    let queue = this.queues.get(consumerId);
    if (!queue) {
      queue = openConsumerQueue(this.connection(), this.layout, consumerId);
      this.queues.set(consumerId, queue);
    }
    return queue;
  }

  /**
   * Adds every planned job; rejects if any queue rejects (a partial write is fine: ids dedupe).
   * After `timeoutMs` it abandons the connection and rejects with `PGQ_TIMEOUT`: whatever of the
   * batch was still in the client is dropped, not sent later. (What had already reached Redis'
   * socket runs when Redis resumes; its job ids dedupe it.) The next call opens a new connection,
   * whose commands wait for its ready check, so nothing more is sent to a Redis that still hangs.
   */
  async addAll(
    plan: Map<string, (PlannedJob | PlannedBatchJob)[]>,
    options: AddOptions,
  ): Promise<number> {
    let count = 0;
    const chunk = options.chunk ?? Infinity;
    const adding = Promise.all(
      [...plan].map(async ([consumerId, jobs]) => {
        count += jobs.length;
        const queue = this.get(consumerId);
        if (jobs.length <= chunk) {
          await queue.addBulk(jobs);
          return;
        }
        for (let i = 0; i < jobs.length; i += chunk) await queue.addBulk(jobs.slice(i, i + chunk));
      }),
    );
    let timer: NodeJS.Timeout | undefined;
    const timeout = new Promise<never>((_, reject) => {
      timer = setTimeout(() => {
        this.abandon();
        reject(
          new PgqError(
            'PGQ_TIMEOUT',
            `Redis did not accept the batch in time (after ${options.timeoutMs} ms)`,
          ),
        );
      }, options.timeoutMs);
    });
    // The abandoned adds reject once their connection is gone; nobody waits for them any more.
    adding.catch(() => undefined);
    try {
      await Promise.race([adding, timeout]);
    } finally {
      clearTimeout(timer);
    }
    return count;
  }

  /** Drops the connection and its queues now: pending commands reject, none is replayed. */
  abandon(): void {
    const redis = this.redis;
    const queues = [...this.queues.values()];
    this.redis = undefined;
    this.queues.clear();
    if (!redis) return;
    this.abandoned++;
    redis.disconnect();
    for (const queue of queues) void queue.close().catch(() => undefined);
  }

  /** How many connections were abandoned so far (a hung Redis, see {@link addAll}). */
  get abandonedConnections(): number {
    return this.abandoned;
  }

  async close(): Promise<void> {
    await Promise.all([...this.queues.values()].map((q) => q.close().catch(() => undefined)));
    this.queues.clear();
    const redis = this.redis;
    this.redis = undefined;
    if (redis) {
      try {
        await redis.quit();
      } catch {
        redis.disconnect();
      }
    }
  }
}
