import type { Worker } from 'bullmq';
import type { Attempts } from './attempt.js';
import type { Logger } from '../log.js';

/** How long handlers get to settle after their signal aborted at the shutdown timeout. */
const ABORT_GRACE_MS = 1000;

/**
 * Stops BullMQ Workers gracefully: in-flight jobs finish, for up to `timeoutMs`. Past it, the
 * handlers still running are told (their `ctx.signal` aborts), those that listen get a moment to
 * settle (their outcome is then recorded), and the rest are abandoned: `worker.close()` alone
 * would wait for them with no limit; BullMQ's stalled-job check hands their jobs to another
 * worker once their lock expires.
 */
export async function stopWorkers(
  workers: readonly Worker[],
  attempts: Attempts,
  timeoutMs: number,
  log: Logger,
): Promise<void> {
  const closing = Promise.all(workers.map((worker) => worker.close()));
  if (await settlesWithin(closing, timeoutMs)) return;
  log.warn(
    { timeoutMs, running: attempts.running },
    'shutdown timeout: aborting the signals of in-flight handlers',
  );
  attempts.abortAll();
  if (await settlesWithin(closing, ABORT_GRACE_MS)) return;
  log.warn(
    { running: attempts.running },
    'abandoning in-flight jobs (BullMQ retries them as stalled)',
  );
  await Promise.all(workers.map((worker) => worker.close(true).catch(() => undefined)));
}

/** Whether `promise` settles within `ms` (its rejection counts as settled). */
async function settlesWithin(promise: Promise<unknown>, ms: number): Promise<boolean> {
  let timer: NodeJS.Timeout | undefined;
  const late = new Promise<false>((resolve) => {
    timer = setTimeout(() => resolve(false), ms);
  });
  const settled = promise.then(
    () => true as const,
    () => true as const,
  );
  try {
    return await Promise.race([settled, late]);
  } finally {
    clearTimeout(timer);
  }
}
