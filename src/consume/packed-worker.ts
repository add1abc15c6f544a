import type { Worker } from 'bullmq';
import type { PackedConsumerDefinition, SingleConsumerDefinition } from './consumers.js';
import type { BatchRunnerDeps } from './batch-worker.js';
import { createJobProcessor } from './processor.js';
import { traceJobs } from './tracing.js';
import { forPackExits } from './pack-exit.js';
import { PackedRunner } from './packed-runner.js';
import { startFetcher, type FetcherConnection } from './fetchers.js';

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
  const single = forPackExits(traceJobs(def.id, createJobProcessor(asSingle, deps)));
  const runner = new PackedRunner(def, { ...deps, single, redis: where.connection });
  return startFetcher(def, runner.process, runner.workerConcurrency, where);
}
