import { DelayedError, type Job } from 'bullmq';
import { subscribedAmong } from '../db/registration.js';
import type { Queryable } from '../db/store.js';
import type { Logger } from '../log.js';

/** What the processor returns for a job of a channel the consumer no longer subscribes to. */
export const UNSUBSCRIBED = { skipped: 'channel unsubscribed (pgq-bridge consumers remove)' };

/** How long a job for an unlisted channel waits before another worker may take it. */
const LEAVE_MS = { first: 500, max: 10_000 };
/** Subscriptions change rarely: one lookup per channel per this many ms is enough. */
const CACHE_MS = 5_000;

/**
 * During a rolling deploy two versions of a consumer share its queue, and a job can reach a
 * worker whose definition does not list the job's channel (an old version, while the new one
 * added the channel). Such a job is left for a worker that lists it: moved back to the delayed
 * set without using up an attempt (BullMQ `moveToDelayed` + `DelayedError`), never handled by
 * the wrong code, never failed. Only when Postgres no longer has the subscription (an operator
 * removed it) is the job completed without running.
 */
export function foreignChannelGuard(deps: {
  consumerId: string;
  channels: readonly string[];
  db: Queryable;
  schema: string;
  log: Logger;
}): (job: Job, channels: readonly string[]) => Promise<typeof UNSUBSCRIBED | null> {
  const listed = new Set(deps.channels);
  const cache = new Map<string, { subscribed: boolean; at: number }>();
  const warned = new Set<string>();
  return async (job, channels) => {
    const foreign = [...new Set(channels.filter((c) => !listed.has(c)))];
    if (foreign.length === 0) return null;
    const now = Date.now();
    const unknown = foreign.filter((c) => (cache.get(c)?.at ?? -Infinity) < now - CACHE_MS);
    if (unknown.length > 0) {
      const subscribed = await subscribedAmong(deps.db, deps.schema, deps.consumerId, unknown);
      for (const c of unknown) cache.set(c, { subscribed: subscribed.has(c), at: now });
    }
    if (!foreign.some((c) => cache.get(c)?.subscribed)) {
      // A batch that also holds listed channels runs; one of removed channels only is done.
      return channels.some((c) => listed.has(c)) ? null : UNSUBSCRIBED;
    }
    const key = foreign.join(',');
    if (!warned.has(key)) {
      warned.add(key);
      deps.log.info(
        { consumer: deps.consumerId, channels: foreign },
        'jobs of channels this definition does not list are left for workers that list them',
      );
    }
    // Grows with each bounce, so a job nobody here can run does not spin.
    const delay = Math.min(LEAVE_MS.max, LEAVE_MS.first * Math.max(1, job.attemptsStarted));
    await job.moveToDelayed(Date.now() + delay, job.token);
    throw new DelayedError(`channel ${key} is not listed by this worker's definition`);
  };
}
