import type { JobType, Queue } from 'bullmq';
import type { RedisConnection } from '../redis.js';
import { withTimeout } from '../util.js';

/** How long one Redis round trip of reconcile may take before it fails (instead of hanging). */
export const REDIS_STEP_TIMEOUT_MS = 30_000;

/**
 * Read-only check of many job hashes in one round trip (a pipeline of per-key commands costs
 * reconcile more CPU than the jobs it adds). Returns the 1-based positions of keys without a
 * `data` field: positive when the key is absent, negative when the hash exists without data.
 * The keys of one queue share a hash slot (see `queuePrefix`), so this also runs on a Cluster.
 */
const PRESENCE_SCRIPT = `
local out = {}
for i, key in ipairs(KEYS) do
  if redis.call('HEXISTS', key, 'data') == 0 then
    if redis.call('EXISTS', key) == 1 then out[#out + 1] = -i else out[#out + 1] = i end
  end
end
return out`;

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
  const keys = jobIds.map((id) => queue.toKey(id));
  const positions = (await withTimeout(
    redis.eval(PRESENCE_SCRIPT, keys.length, ...keys),
    REDIS_STEP_TIMEOUT_MS,
    'Redis did not answer the job presence check in time',
  )) as number[];
  const remains: string[] = [];
  for (const position of positions) {
    const id = jobIds[Math.abs(position) - 1];
    if (position > 0 || !repair) missing.add(id);
    else remains.push(id);
  }
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

/** Jobs read per call while listing a queue's batch jobs (their data holds whole batches). */
const BATCH_SCAN_PAGE = 20;

/**
 * Ids of the notifications that wait inside unfinished batch jobs of `queue` (a batch consumer's
 * queue). Such a notification has no `n<id>` job of its own, so a presence check by job id alone
 * would take it for lost. Reads the jobs a few at a time and keeps only the ids.
 */
export async function notificationsInBatchJobs(queue: Queue): Promise<Set<string>> {
  const held = new Set<string>();
  const states: JobType[] = ['waiting', 'active', 'delayed', 'prioritized'];
  for (let start = 0; ; start += BATCH_SCAN_PAGE) {
    const jobs = await withTimeout(
      queue.getJobs(states, start, start + BATCH_SCAN_PAGE - 1, true),
      REDIS_STEP_TIMEOUT_MS,
      'Redis did not list the batch jobs in time',
    );
    for (const job of jobs) {
      const batch = (job?.data as { batch?: { id?: unknown }[] } | undefined)?.batch;
      if (!Array.isArray(batch)) continue;
      for (const item of batch) if (typeof item?.id === 'string') held.add(item.id);
    }
    if (jobs.length < BATCH_SCAN_PAGE) return held;
  }
}
