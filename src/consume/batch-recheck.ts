import type { CompletedLookup } from './ledger-lookup.js';
import type { NotificationJobData } from './notification.js';

/** A job waiting for a handler call: its notifications, and how to settle it. */
interface Waiting {
  entries: NotificationJobData[];
  settle: (error: unknown) => void;
}

/**
 * Asks the ledger once more, right before a batch handler call, and leaves out what it now
 * records as completed; a job left with nothing is settled as done. Returns the jobs that still
 * have notifications to handle.
 *
 * Why again: a job asks the ledger when it starts, but then may wait for its turn (ordered), for
 * other jobs to fill its call (`maxWaitMs`) or for a slot. Meanwhile a twin job holding the same
 * notifications (a listener's batch rolled back after Redis took it, its rows packed again
 * differently; a `reconcile --verify` replay) may have completed them, in this process or
 * another: the soak saw such runs start up to 570 ms after the ledger had committed the
 * completion. A transactional call needs none of this: it claims its ledger rows in its
 * transaction.
 */
export async function leaveOutCompleted<T extends Waiting>(
  lookup: CompletedLookup,
  consumerId: string,
  jobs: T[],
): Promise<T[]> {
  const done = await lookup.completedAmong(
    consumerId,
    jobs.flatMap((j) => j.entries.map((e) => e.id)),
  );
  if (done.size === 0) return jobs;
  const open: T[] = [];
  for (const job of jobs) {
    job.entries = job.entries.filter((e) => !done.has(e.id));
    if (job.entries.length === 0) job.settle(undefined);
    else open.push(job);
  }
  return open;
}
