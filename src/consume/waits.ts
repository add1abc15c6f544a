import type { Job } from 'bullmq';

/**
 * First re-check of a waiting notification, doubled on each further wait up to
 * {@link MAX_WAIT_MS}. Long on purpose: a waiting notification is promoted the moment the one
 * before it finishes (and looks again right after it moved to the delayed set, which closes the
 * race with that promotion), so the wait is only a safety net for a promotion lost to a Redis or
 * Postgres error. Short waits made every queued notification of a busy key come back again and
 * again for nothing: 10 keys drained at 60/s with 0.5 s, against 875/s unordered.
 */
export const FIRST_WAIT_MS = 5000;
/** Longest wait between two checks (see {@link FIRST_WAIT_MS}). */
export const MAX_WAIT_MS = 60_000;

/**
 * How long a job waits before it looks again, after `waits` earlier waits. Jittered (±25%) so
 * that the notifications queued behind one key do not all wake in the same millisecond.
 */
export function waitMs(waits: number, random = Math.random): number {
  const base = Math.min(MAX_WAIT_MS, FIRST_WAIT_MS * 2 ** Math.min(waits, 10));
  return Math.round(base * (0.75 + random() / 2));
}

/**
 * Times this job already waited for its key: BullMQ counts every start (`attemptsStarted`) but
 * moving a job to delayed uses no attempt (`attemptsMade`), so the difference is the waits (plus
 * stalled restarts, which only lengthen the next wait).
 */
export function waitsOf(job: Pick<Job, 'attemptsStarted' | 'attemptsMade'>): number {
  return Math.max(0, job.attemptsStarted - job.attemptsMade - 1);
}
