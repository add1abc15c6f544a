import { Worker, type Job } from 'bullmq';
import { CONSUMER_DEFAULTS, workerTuning, type ConsumerDefinition } from './consumers.js';
import type { RedisConnection } from '../redis.js';

/** BullMQ job options derived from a consumer definition; the listener applies them to its jobs. */
export function jobOptionsOf(def: ConsumerDefinition): Record<string, unknown> {
  return {
    attempts: def.attempts ?? CONSUMER_DEFAULTS.attempts,
    backoff: def.backoff ?? CONSUMER_DEFAULTS.backoff,
    removeOnComplete: def.removeOnComplete ?? CONSUMER_DEFAULTS.removeOnComplete,
    removeOnFail: def.removeOnFail ?? CONSUMER_DEFAULTS.removeOnFail,
  };
}

/**
 * How many BullMQ Workers share one consumer's `concurrency` in a process: one per 10 slots, at
 * most 4. Why: a BullMQ Worker fetches waiting jobs one round trip at a time and starts none until
 * it has fetched what is waiting (up to its concurrency), while the listener adds jobs in batches.
 * Several Workers fetch side by side over the same connection, so the first handlers of a batch
 * start sooner (stream bench at 2,000/s, five alternating runs each: p50 6.4 ms instead of 9.9,
 * medians; p99 spread as widely as before on the shared machine). Each Worker costs one more
 * blocking Redis connection.
 */
export function fetchersFor(concurrency: number): number {
  return Math.min(4, Math.max(1, Math.floor(concurrency / 10)));
}

/** `total` split into `parts` integers that differ by at most one (50 in 4 → 13, 13, 12, 12). */
export function splitEvenly(total: number, parts: number): number[] {
  return Array.from(
    { length: parts },
    (_, i) => Math.floor(total / parts) + (i < total % parts ? 1 : 0),
  );
}

/** Where a consumer's BullMQ Workers connect. */
export interface FetcherConnection {
  connection: RedisConnection;
  prefix: string;
}

/**
 * The BullMQ Workers of a one-notification-per-job consumer: `concurrency` split over
 * {@link fetchersFor} Workers that share one processor.
 */
export function startFetchers(
  def: ConsumerDefinition,
  processor: (job: Job) => Promise<unknown>,
  concurrency: number,
  where: FetcherConnection,
): Worker[] {
  return splitEvenly(concurrency, fetchersFor(concurrency)).map((share) =>
    startFetcher(def, processor, share, where),
  );
}

/** One BullMQ Worker on the consumer's queue (named after its id). */
export function startFetcher(
  def: ConsumerDefinition,
  processor: (job: Job) => Promise<unknown>,
  concurrency: number,
  where: FetcherConnection,
): Worker {
  return new Worker(def.id, processor, {
    connection: where.connection,
    prefix: where.prefix,
    concurrency,
    ...workerTuning(def),
  });
}
