/**
 * How a notification leaves a pack (consume/packed-runner.ts): when its handler fails inside the
 * pack, it becomes a BullMQ job of its own, `n<id>` (the id a replay of it would use, so the two
 * dedupe), and the rest of the pack goes on.
 *
 * - Not its last attempt: the job carries the attempts it had (`attemptsBefore`) and waits the
 *   consumer's backoff; its later retries keep the backoff's progression (an exponential delay
 *   goes on doubling from where the pack left it), so it gets exactly `attempts` attempts in all.
 * - Its last attempt, or `PermanentError`: the job carries `deadLetter` and fails at once, without
 *   running the handler again, so the dead letter sits in BullMQ's failed set like any other and
 *   `reconcile --failed` (or a retry in Bull Board) replays it.
 */
import { UnrecoverableError, type Job, type JobsOptions, type Queue } from 'bullmq';
import type { RedisConnection } from '../redis.js';
import type { NotificationJobData } from './notification.js';
import { attemptOf, isPermanent } from './job-data.js';
import { errorMessage } from '../util.js';

type BackoffOption = JobsOptions['backoff'];

/**
 * The wait before the next attempt after attempt `attempt` under `backoff` (BullMQ's built-in
 * strategies), and the backoff the notification's own job continues with.
 */
export function backoffAfter(
  backoff: BackoffOption,
  attempt: number,
): { delay: number; backoff: BackoffOption } {
  if (typeof backoff === 'number') return { delay: backoff, backoff };
  if (!backoff || typeof backoff !== 'object') return { delay: 0, backoff };
  const delay = backoff.delay ?? 0;
  if (backoff.type !== 'exponential') return { delay, backoff };
  // BullMQ waits 2^(attemptsMade - 1) × delay; the new job's attemptsMade starts from 0 again.
  return {
    delay: Math.round(2 ** (attempt - 1) * delay),
    backoff: { ...backoff, delay: Math.round(2 ** attempt * delay) },
  };
}

/** The job options every job leaving `pack` starts from. */
function baseOptions(pack: Job, jobId: string): JobsOptions {
  return {
    jobId,
    attempts: pack.opts.attempts,
    removeOnComplete: pack.opts.removeOnComplete,
    removeOnFail: pack.opts.removeOnFail,
  };
}

/**
 * A job for `entry`, leaving pack `pack` without having failed in it: the pack was restarted
 * (a stalled worker, a stop) and hands out what it had not finished. It keeps the attempts the
 * pack had used (a pack fails an attempt only when pgq-bridge itself could not go on).
 */
export function leftoverJob(
  pack: Job,
  entry: NotificationJobData,
  jobId: string,
): { name: string; data: NotificationJobData; opts: JobsOptions } {
  const used = pack.attemptsMade;
  if (used === 0) {
    return {
      name: entry.channel,
      data: entry,
      opts: { ...baseOptions(pack, jobId), backoff: pack.opts.backoff },
    };
  }
  const next = backoffAfter(pack.opts.backoff, used);
  return {
    name: entry.channel,
    data: { ...entry, attemptsBefore: used },
    opts: { ...baseOptions(pack, jobId), backoff: next.backoff },
  };
}

/** A job for `entry`, leaving pack `pack` after its attempt `attempt` failed with `error`. */
export function exitJob(
  pack: Job,
  entry: NotificationJobData,
  jobId: string,
  attempt: number,
  error: unknown,
  final: boolean,
): { name: string; data: NotificationJobData; opts: JobsOptions } {
  const base = baseOptions(pack, jobId);
  if (final) {
    const deadLetter = errorMessage(error).slice(0, 2000) || 'failed';
    return {
      name: entry.channel,
      data: { ...entry, deadLetter },
      opts: { ...base, backoff: pack.opts.backoff },
    };
  }
  const next = backoffAfter(pack.opts.backoff, attempt);
  return {
    name: entry.channel,
    data: { ...entry, attemptsBefore: attempt },
    opts: { ...base, backoff: next.backoff, delay: next.delay },
  };
}

/**
 * Wraps the one-notification processor for a packed consumer's single jobs: a `deadLetter` job
 * fails at once on its first start; a job that left a pack is failed for good once its attempts
 * in all are used up (BullMQ counts only those of the job itself).
 */
export function forPackExits(
  processor: (job: Job, token?: string) => Promise<unknown>,
): (job: Job, token?: string) => Promise<unknown> {
  return async (job, token) => {
    const data = job.data as Partial<NotificationJobData> | undefined;
    if (typeof data?.deadLetter === 'string' && job.attemptsMade === 0 && data.replay !== true) {
      throw new UnrecoverableError(data.deadLetter);
    }
    try {
      return await processor(job, token);
    } catch (error) {
      const carried = data?.replay === true ? 0 : (data?.attemptsBefore ?? 0);
      const moved = error instanceof Error && error.name === 'DelayedError';
      if (carried > 0 && !moved && !isPermanent(error)) {
        if (attemptOf(job) >= (job.opts.attempts ?? 1)) {
          throw new UnrecoverableError(errorMessage(error));
        }
      }
      throw error;
    }
  };
}

/** Of `entries`, those with a job of their own in `queue` (they left their pack before). */
export async function ownJobsAmong(
  redis: RedisConnection,
  queue: Queue,
  entries: readonly NotificationJobData[],
  jobIdFor: (notificationId: string) => string,
): Promise<Set<string>> {
  const found = new Set<string>();
  if (entries.length === 0) return found;
  const pipeline = redis.pipeline();
  for (const e of entries) pipeline.exists(queue.toKey(jobIdFor(e.id)));
  const replies = (await pipeline.exec()) ?? [];
  replies.forEach(([error, exists], i) => {
    if (error) throw error;
    if (exists === 1) found.add(entries[i].id);
  });
  return found;
}
