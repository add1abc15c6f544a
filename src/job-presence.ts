import type { Queue } from 'bullmq';
import type { RedisConnection } from './redis.js';
import { withTimeout } from './util.js';

/** How long one Redis round trip of reconcile may take before it fails (instead of hanging). */
export const REDIS_STEP_TIMEOUT_MS = 30_000;

/**
 * Which of `jobIds` have no job in `queue`, in any state: one pipelined EXISTS per job hash key
 * (`<prefix>:<queue>:<jobId>`), in a single round trip.
 */
export async function missingJobIds(
  redis: RedisConnection,
  queue: Queue,
  jobIds: readonly string[],
): Promise<Set<string>> {
  const missing = new Set<string>();
  if (jobIds.length === 0) return missing;
  const pipeline = redis.pipeline();
  for (const id of jobIds) pipeline.exists(queue.toKey(id));
  const replies = await withTimeout(
    pipeline.exec(),
    REDIS_STEP_TIMEOUT_MS,
    'Redis did not answer EXISTS in time',
  );
  if (!replies) throw new Error('Redis pipeline was aborted');
  replies.forEach(([error, count], i) => {
    if (error) throw error;
    if (count === 0) missing.add(jobIds[i]);
  });
  return missing;
}
