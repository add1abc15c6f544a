import type { Queue } from 'bullmq';
import { openConsumerQueue, type QueueLayoutSettings } from '../queue-layout.js';
import type { RedisConnection } from '../redis.js';
import type { PlannedJob } from './plan.js';
import type { PlannedBatchJob } from './pack.js';

/** Keeps one BullMQ Queue per consumer on a shared Redis connection. */
export class QueueSet {
  private readonly queues = new Map<string, Queue>();
  constructor(
    readonly redis: RedisConnection,
    /** Decide each queue's key prefix (one hash tag per queue on a Redis Cluster). */
    readonly layout: QueueLayoutSettings,
  ) {}

  get(consumerId: string): Queue {
    let queue = this.queues.get(consumerId);
    if (!queue) {
      queue = openConsumerQueue(this.redis, this.layout, consumerId);
      this.queues.set(consumerId, queue);
    }
    return queue;
  }

  /** Adds every planned job; rejects if any queue rejects (a partial write is fine: ids dedupe). */
  async addAll(plan: Map<string, (PlannedJob | PlannedBatchJob)[]>): Promise<number> {
    let count = 0;
    await Promise.all(
      [...plan].map(([consumerId, jobs]) => {
        count += jobs.length;
        return this.get(consumerId).addBulk(jobs);
      }),
    );
    return count;
  }

  async close(): Promise<void> {
    await Promise.all([...this.queues.values()].map((q) => q.close().catch(() => undefined)));
    this.queues.clear();
  }
}
