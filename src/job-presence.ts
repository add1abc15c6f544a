import type { Queue } from 'bullmq';
import type { RedisConnection } from './redis.js';
import { withTimeout } from './util.js';

/** How long one Redis round trip of reconcile may take before it fails (instead of hanging). */
export const REDIS_STEP_TIMEOUT_MS = 30_000;

/**
 * Which of `jobIds` have no usable job in `queue`. A job is usable when its hash
 * (`<prefix>:<queue>:<jobId>`) holds its `data`: every job BullMQ adds does. A hash without data
 * is the remains of a job whose hash was evicted or wiped while its id still sat in a list (a
 * worker then failed it with no data); adding the same id is a no-op while it exists, so with
 * `repair` such remains are removed (through BullMQ, from every list) and reported missing.
 * Remains that cannot be removed (locked by a worker right now) count as present.
 */
export async function missingJobIds(
  redis: RedisConnection,
  queue: Queue,
  jobIds: readonly string[],
  repair: boolean,
): Promise<Set<string>> {
  const missing = new Set<string>();
  if (jobIds.length === 0) return missing;
  const pipeline = redis.pipeline();
  for (const id of jobIds) {
    const key = queue.toKey(id);
    pipeline.hexists(key, 'data');
    pipeline.exists(key);
  }
  const replies = await withTimeout(
    pipeline.exec(),
    REDIS_STEP_TIMEOUT_MS,
    'Redis did not answer HEXISTS/EXISTS in time',
  );
  if (!replies) throw new Error('Redis pipeline was aborted');
  const remains: string[] = [];
  jobIds.forEach((id, i) => {
    const [dataError, hasData] = replies[2 * i];
    const [keyError, hasKey] = replies[2 * i + 1];
    if (dataError) throw dataError;
    if (keyError) throw keyError;
    if (hasData === 1) return;
    if (hasKey === 0 || !repair) missing.add(id);
    else remains.push(id);
  });
  for (const id of remains) {
    const removed = await withTimeout(
      queue.remove(id).catch(() => 0),
      REDIS_STEP_TIMEOUT_MS,
      'Redis did not remove a broken job in time',
    );
    if (removed === 1) missing.add(id);
  }
  return missing;
}
