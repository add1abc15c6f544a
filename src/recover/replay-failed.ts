import { Job, type Queue } from 'bullmq';
import { jobDataFor, jobIdFor, type PlannedJob } from '../bridge/plan.js';
import type { NotificationJobData } from '../consume/notification.js';
import {
  REDIS_STEP_TIMEOUT_MS,
  type ReconcileCounts,
  type ReconcileDeps,
  type ReconcileScope,
} from './context.js';
import { errorMessage, withTimeout } from '../util.js';

const JOB_ID = /^n(\d+)$/;

/** Keeps a job whose data matches the run's `channels` / `since` filters. */
type JobFilter = (data: NotificationJobData) => boolean;

function scopeFilter(scope: ReconcileScope): JobFilter {
  return (data) =>
    (scope.channels === null || scope.channels.includes(data.channel)) &&
    (scope.since === null || new Date(data.createdAt).getTime() >= scope.since.getTime());
}

/**
 * `reconcile --failed`: replays the dead letters of the chosen consumers. First those the ledger
 * shows failed, then failed jobs BullMQ holds without a ledger outcome (a worker that died before
 * writing it). A failed job still in BullMQ keeps its id, so it is retried in place with fresh
 * attempts and `replay: true` in its data; one that is gone is added again from the row.
 */
export async function replayFailed(
  d: ReconcileDeps,
  scope: ReconcileScope,
  c: ReconcileCounts,
): Promise<void> {
  const consumers = scope.consumers ?? (await d.recovery.consumerIds(d.pool));
  for (const consumerId of consumers) {
    if (d.signal?.aborted) return;
    const queue = d.queues.get(consumerId);
    const seen = new Set<string>();
    let last = '0';
    for (;;) {
      const page = await d.recovery.failedPage(
        d.pool,
        consumerId,
        last,
        d.batchSize,
        scope.channels,
        scope.since,
      );
      if (page.length === 0) break;
      last = page[page.length - 1].notification_id;
      c.scanned += page.length;
      const ids = page.map((p) => p.notification_id);
      for (const id of ids) seen.add(id);
      await replayIds(d, consumerId, queue, ids, null, c);
      if (page.length < d.batchSize || d.signal?.aborted) break;
    }
    await replayUnrecordedFailures(d, scope, consumerId, queue, seen, c);
  }
}

/** Failed jobs in BullMQ's failed set that the ledger does not know as failed or completed. */
async function replayUnrecordedFailures(
  d: ReconcileDeps,
  scope: ReconcileScope,
  consumerId: string,
  queue: Queue,
  seen: Set<string>,
  c: ReconcileCounts,
): Promise<void> {
  // ZSCAN tolerates the set changing under it (retried jobs leave it): nothing present
  // throughout is missed.
  let cursor = '0';
  do {
    const [next, flat] = await withTimeout(
      d.redis.zscan(queue.toKey('failed'), cursor, 'COUNT', d.batchSize),
      REDIS_STEP_TIMEOUT_MS,
      'Redis did not answer ZSCAN in time',
    );
    cursor = next;
    const ids: string[] = [];
    for (let i = 0; i < flat.length; i += 2) {
      const id = JOB_ID.exec(flat[i])?.[1];
      if (id !== undefined && !seen.has(id)) ids.push(id);
    }
    if (ids.length === 0) continue;
    for (const id of ids) seen.add(id);
    c.scanned += ids.length;
    const outcomes = await d.recovery.outcomes(d.pool, consumerId, ids);
    // A skipped dead letter (pgq-bridge consumers skip) was given up: never replayed.
    const open = ids.filter((id) => !['completed', 'skipped'].includes(outcomes.get(id) ?? ''));
    c.alreadyDone += ids.length - open.length;
    await replayIds(d, consumerId, queue, open, scopeFilter(scope), c);
  } while (cursor !== '0' && !d.signal?.aborted);
}

/** Retries the failed jobs of `ids` in place; re-adds from the row those whose job is gone. */
async function replayIds(
  d: ReconcileDeps,
  consumerId: string,
  queue: Queue,
  ids: string[],
  filter: JobFilter | null,
  c: ReconcileCounts,
): Promise<void> {
  const jobs = await withTimeout(
    Promise.all(ids.map((id) => Job.fromId<NotificationJobData>(queue, jobIdFor(id)))),
    REDIS_STEP_TIMEOUT_MS,
    'Redis did not return the failed jobs in time',
  );
  const gone: string[] = [];
  await Promise.all(
    jobs.map(async (job, i) => {
      if (!job) {
        gone.push(ids[i]);
        return;
      }
      if (typeof job.data?.id !== 'string' || (filter && !filter(job.data))) return;
      const state = await job.getState();
      if (state !== 'failed') {
        // Waiting, active or delayed: already replayed by someone else; leave it.
        c.alreadyQueued++;
        return;
      }
      if (!d.dryRun) {
        try {
          await job.updateData({ ...job.data, replay: true });
          await job.retry('failed', { resetAttemptsMade: true, resetAttemptsStarted: true });
        } catch (error) {
          // Retried concurrently (Bull Board, another reconcile): it is queued either way.
          d.log.debug({ consumer: consumerId, jobId: job.id, err: errorMessage(error) }, 'retry');
          c.alreadyQueued++;
          return;
        }
      }
      c.replayed++;
      c.enqueued++;
    }),
  );
  if (gone.length > 0) await readdFromRows(d, consumerId, queue, gone, c);
}

/** Dead letters whose BullMQ job is gone (removeOnFail, Redis wiped): new jobs from the rows. */
async function readdFromRows(
  d: ReconcileDeps,
  consumerId: string,
  queue: Queue,
  ids: string[],
  c: ReconcileCounts,
): Promise<void> {
  const rows = await d.recovery.rowsByIds(d.pool, ids);
  const [subscription] = await d.recovery.subscriptions(d.pool, [consumerId], null);
  const jobOptions = subscription?.job_options ?? {};
  if (rows.length < ids.length) {
    c.unreplayable += ids.length - rows.length;
    d.log.warn(
      { consumer: consumerId, count: ids.length - rows.length },
      'failed deliveries whose job and notification are both gone cannot be replayed',
    );
  }
  const jobs: PlannedJob[] = rows.map((row) => ({
    name: row.channel,
    data: jobDataFor(row, true, d.inlinePayloadLimit),
    opts: { ...jobOptions, jobId: jobIdFor(row.id) },
  }));
  if (!d.dryRun && jobs.length > 0) {
    await withTimeout(
      queue.addBulk(jobs),
      REDIS_STEP_TIMEOUT_MS,
      'Redis did not accept the batch in time',
    );
  }
  c.replayed += jobs.length;
  c.enqueued += jobs.length;
}
