import { UnrecoverableError, type Job } from 'bullmq';
import type { BatchJobData, NotificationJobData } from './notification.js';

/**
 * Whether a handler's error ends the job at once: BullMQ's `UnrecoverableError` and our
 * `PermanentError` (which extends it). Matched by name too, because a consumer file may load its
 * own copy of bullmq, whose class is not ours.
 */
export function isPermanent(error: unknown): boolean {
  return (
    error instanceof UnrecoverableError ||
    (error instanceof Error && error.name === 'UnrecoverableError')
  );
}

/**
 * The error for a job whose hash was evicted or wiped while its id stayed queued: there is
 * nothing to run and no notification id to record. `reconcile --verify` removes the remains and
 * re-enqueues the notification from its row.
 */
function missingData(): UnrecoverableError {
  return new UnrecoverableError(
    'job data is missing from Redis (evicted or wiped?): run pgq-bridge reconcile --verify',
  );
}

/** The notification a one-per-job consumer's job carries; throws (permanently) when it has none. */
export function singleEntryOf(job: Job): NotificationJobData {
  const data = job.data as NotificationJobData | undefined;
  if (typeof data?.id !== 'string' || !/^[1-9][0-9]*$/.test(data.id)) throw missingData();
  return data;
}

/** The notifications of a job as a batch consumer reads them. */
export interface JobEntries {
  entries: NotificationJobData[];
  /** Set by reconcile and replays. */
  replay: boolean;
}

/**
 * The notifications of any job: a bridge batch (`{ batch: [...] }`) or a single one (replays,
 * playback, a split batch). Throws (permanently) when the job's data is gone.
 */
export function entriesOf(job: Job): JobEntries {
  const d = job.data as Partial<BatchJobData & NotificationJobData> | undefined;
  if (d && Array.isArray(d.batch)) return { entries: d.batch, replay: d.replay === true };
  if (d && typeof d.id === 'string') {
    return { entries: [d as NotificationJobData], replay: d.replay === true };
  }
  throw missingData();
}

/**
 * The 1-based number of the attempt BullMQ is starting now; for a notification that left a pack
 * after failing in it, counted on from its attempts there (`attemptsBefore`, not for replays).
 */
export function attemptOf(job: Job): number {
  const data = job.data as Partial<NotificationJobData> | undefined;
  const before = data?.replay === true ? 0 : (data?.attemptsBefore ?? 0);
  return job.attemptsMade + 1 + before;
}
