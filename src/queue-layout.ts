/**
 * Where a consumer's BullMQ queue lives in Redis. Every Queue and Worker pgq-bridge builds for a
 * consumer (bridge, work, reconcile, status, board) takes its options from here, so all of them
 * agree on the keys; see `queuePrefix` for the layout.
 */
import { Queue } from 'bullmq';
import type { Logger } from './log.js';
import {
  queuePrefix,
  singleSlotPrefix,
  type RedisConnection,
  type RedisSettings,
} from './redis.js';

/** The settings that decide a consumer queue's keys. */
export type QueueLayoutSettings = RedisSettings & { prefix: string };

/** The connection and key prefix of a consumer's queue: spread into `new Queue` / `new Worker`. */
export interface ConsumerQueueOptions {
  connection: RedisConnection;
  prefix: string;
}

/** Options for a BullMQ Queue or Worker of `consumerId` (the queue's name is the consumer id). */
export function consumerQueueOptions(
  redis: RedisConnection,
  settings: QueueLayoutSettings,
  consumerId: string,
): ConsumerQueueOptions {
  return { connection: redis, prefix: queuePrefix(settings, consumerId) };
}

/** Opens the BullMQ Queue of a consumer (the caller closes it). */
export function openConsumerQueue(
  redis: RedisConnection,
  settings: QueueLayoutSettings,
  consumerId: string,
): Queue {
  return new Queue(consumerId, consumerQueueOptions(redis, settings, consumerId));
}

/**
 * The consumers among `consumerIds` whose queue still has keys in the single-slot layout of
 * earlier versions (`{pgq}:<consumer>:...`) on a Redis Cluster: jobs there are read by nobody
 * now. Empty on a single Redis and when the prefix carries its own hash tag (nothing moved).
 */
export async function consumersWithSingleSlotKeys(
  redis: RedisConnection,
  settings: QueueLayoutSettings,
  consumerIds: readonly string[],
): Promise<string[]> {
  const old = singleSlotPrefix(settings);
  if (old === undefined || consumerIds.length === 0) return [];
  // Every old key hashes to the slot of `old`, so one multi-key EXISTS per consumer is legal.
  const found = await Promise.all(
    consumerIds.map(async (id) => {
      const base = `${old}:${id}`;
      return (await redis.exists(`${base}:meta`, `${base}:id`, `${base}:wait`)) > 0;
    }),
  );
  return consumerIds.filter((_, i) => found[i]);
}

/**
 * Logs what an operator does when old-layout queues are found (see README, "Running at scale"):
 * their unfinished jobs are re-derived from the rows and the ledger by `reconcile --verify`.
 * Never throws: a failed look-up is no reason to stop a worker.
 */
export async function warnAboutSingleSlotKeys(
  redis: RedisConnection,
  settings: QueueLayoutSettings,
  consumerIds: readonly string[],
  log: Logger,
): Promise<void> {
  try {
    const stale = await consumersWithSingleSlotKeys(redis, settings, consumerIds);
    if (stale.length === 0) return;
    const old = singleSlotPrefix(settings);
    log.warn(
      { consumers: stale, oldPrefix: old, check: 'queue-layout' },
      `queues in the old single-slot layout (${old}:<consumer>:...) found on the Redis Cluster: ` +
        'nobody reads them now. Run `pgq-bridge reconcile --verify` once to re-enqueue what is ' +
        'unfinished, then delete the old keys; or set the prefix to ' +
        `${JSON.stringify(old)} to keep the old layout`,
    );
  } catch {
    // Redis not reachable yet: the services retry; the check is advice only.
  }
}
