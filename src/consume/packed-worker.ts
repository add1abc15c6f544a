import { Worker } from 'bullmq';
import {
  workerTuning,
  type PackedConsumerDefinition,
  type SingleConsumerDefinition,
} from './consumers.js';
import type { BatchRunnerDeps } from './batch-deps.js';
import { createJobProcessor } from './processor.js';
import { traceJobs } from './tracing.js';
import { forPackExits } from './pack-exit.js';
import { PackedRunner } from './packed-runner.js';
import type { FetcherConnection } from './fetchers.js';
import { Slots } from './slots.js';

/** Stalled restarts BullMQ allows a job of a packed consumer's queue before it fails it. */
const PACK_STALLS = 3;

/**
 * The BullMQ Worker of a packed consumer (`batch` + plain `handle`): packs go through a
 * {@link PackedRunner}; one-notification jobs (replays, playback, notifications that left a pack)
 * through the usual per-job pipeline, traced per attempt, under the same `concurrency`.
 */
export function startPackedWorker(
  def: PackedConsumerDefinition,
  deps: BatchRunnerDeps & { signal: AbortSignal },
  where: FetcherConnection,
): Worker {
  // The per-job pipeline reads only the handler and its options, never `batch`.
  const asSingle = { ...def, batch: undefined } as SingleConsumerDefinition;
  const slots = new Slots(deps.concurrency);
  const single = forPackExits(traceJobs(def.id, createJobProcessor(asSingle, { ...deps, slots })));
  const runner = new PackedRunner(def, { ...deps, single, slots, redis: where.connection });
  return new Worker(def.id, runner.process, {
    connection: where.connection,
    prefix: where.prefix,
    concurrency: runner.workerConcurrency,
    ...workerTuning(def),
    // A pack restarted as stalled hands its rest out at once, but a worker killed again before
    // it did would make BullMQ fail the whole pack (default limit 1) with its notifications in it.
    maxStalledCount: PACK_STALLS,
  });
}
