import { Job, Queue, type ConnectionOptions } from 'bullmq';
import { jobIdFor } from '../bridge/plan.js';
import { OrderingSql } from '../db/ordering.js';
import type { Queryable } from '../db/store.js';
import { errorMessage } from '../util.js';

/**
 * How long a "job J waits for notification N" entry lives in Redis: longer than the longest
 * wait (a waiting job records itself again at each look), so a lost entry costs at most one
 * wait, and entries of jobs that went away expire by themselves.
 */
const WAITING_TTL_MS = 150_000; // 2 x MAX_WAIT_MS (consume/ordering.ts) + 30 s

/** The Redis key recording which job waits for notification `id`'s turn (packs). */
function waitingKey(queue: Queue, id: string): string {
  return queue.toKey(`pgq-waiting:${id}`);
}

/**
 * Moves a delayed job to waiting; a job that is not delayed (waiting, active, not yet bridged)
 * is left alone. One round trip: the job is addressed by id, not fetched.
 */
export async function promoteJob(queue: Queue, jobId: string): Promise<boolean> {
  try {
    await new Job(queue, 'promote', null, {}, jobId).promote();
    return true;
  } catch (error) {
    // BullMQ's texts for "not in the delayed state" and "no such job" (finished-errors.js).
    if (/not in the delayed state|Missing key for job/.test(errorMessage(error))) return false;
    throw error;
  }
}

/**
 * Records that job `jobId` waits until each of `notificationIds` may run, so that
 * {@link promoteWaiting} finds it. Needed for jobs whose id cannot be derived from a
 * notification's id (a pack `b<first>-<last>-<hash>`, a merged group); one Redis round trip.
 */
export async function recordWaiting(
  queue: Queue,
  jobId: string,
  notificationIds: readonly string[],
): Promise<void> {
  if (notificationIds.length === 0) return;
  const client = await queue.getBackend().client;
  // Sent together on one connection (a round trip, not one per notification).
  await Promise.all(
    notificationIds.map((id) => client.set(waitingKey(queue, id), jobId, { PX: WAITING_TTL_MS })),
  );
}

/**
 * Promotes the job that carries notification `id` now that its turn has come: its own job
 * (`n<id>`) and, with `packs`, the job recorded by {@link recordWaiting} (a pack). Resolves to
 * whether a delayed job was moved to waiting. Throws on a Redis error.
 */
export async function promoteWaiting(queue: Queue, id: string, packs: boolean): Promise<boolean> {
  const single = jobIdFor(id);
  if (!packs) return promoteJob(queue, single);
  const [own, recorded] = await Promise.all([
    promoteJob(queue, single),
    queue.getBackend().client.then((c) => c.get(waitingKey(queue, id))),
  ]);
  if (recorded === null || recorded === single) return own;
  return (await promoteJob(queue, recorded)) || own;
}

/**
 * A getter that opens the consumer's Queue on first use and adds it to `opened` (which the
 * worker closes at shutdown).
 */
export function lazyQueue(
  name: string,
  where: { connection: ConnectionOptions; prefix: string },
  opened: Queue[],
): () => Queue {
  let queue: Queue | undefined;
  return () => {
    if (!queue) {
      queue = new Queue(name, { connection: where.connection, prefix: where.prefix });
      opened.push(queue);
    }
    return queue;
  };
}

/**
 * After `consumers skip` gave up a delivery: promotes the job of the next notification of its
 * key (ordered consumers only; its own job or a pack waiting for it), so the released key moves
 * on at once. Best effort: the next one also finds its way when its wait ends.
 */
export async function promoteSuccessor(
  db: Queryable,
  queue: Queue,
  schema: string,
  consumerId: string,
  notificationId: string,
): Promise<void> {
  const next = await new OrderingSql(schema)
    .successorOfId(db, consumerId, notificationId)
    .catch(() => null);
  if (next !== null) await promoteWaiting(queue, next, true).catch(() => false);
}
