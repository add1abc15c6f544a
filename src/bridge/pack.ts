import { createHash } from 'node:crypto';
import type { JobsOptions } from 'bullmq';
import type { PlannedJob } from './plan.js';
import type { SubscriptionRow } from '../db/store.js';
import type { BatchJobData } from '../consume/notification.js';

/** A job carrying several notifications, for a batch consumer's queue. */
export interface PlannedBatchJob {
  name: string;
  data: BatchJobData;
  opts: JobsOptions;
}

/**
 * The id of a batch job: first and last notification id plus a hash of every id in it.
 *
 * Why the hash: the same rows can be packed twice in different groups — a bridge transaction
 * whose jobs reached Redis but whose COMMIT failed leaves its rows unbridged, and the next claim
 * may hold more or fewer of them. An id made of the first id alone would make the second group a
 * no-op (BullMQ keeps the first id) and lose the rows only it holds; with the full composition in
 * the id, a different group is a different job (its notifications may then be handled twice, at
 * least once either way; the worker skips those the ledger already records as completed), and
 * the same group dedupes as a single notification's job does.
 */
export function batchJobIdFor(ids: readonly string[]): string {
  const hash = createHash('sha1').update(ids.join(',')).digest('hex').slice(0, 16);
  return `b${ids[0]}-${ids[ids.length - 1]}-${hash}`;
}

/**
 * A pack's job name, as Bull Board lists it: how many notifications, of which channels, which
 * ids (`50 × orders, 101…150`); the job's data lists every one.
 */
export function packNameOf(group: readonly PlannedJob[]): string {
  const channels = [...new Set(group.map((j) => j.data.channel))];
  const shown = channels.length <= 3 ? channels.join(', ') : `${channels.length} channels`;
  return `${group.length} × ${shown}, ${group[0].data.id}…${group[group.length - 1].data.id}`;
}

/**
 * Packs the planned jobs of batch consumers into jobs of up to `batch.size` notifications, in id
 * order; other consumers' jobs are left as they are. A group of one stays a single
 * notification's job (`n<id>`), whose id dedupes exactly.
 */
export function packBatches(
  plan: Map<string, PlannedJob[]>,
  subscriptions: readonly SubscriptionRow[],
): Map<string, (PlannedJob | PlannedBatchJob)[]> {
  const sizes = new Map<string, number>();
  for (const sub of subscriptions) {
    if (sub.batch && sub.batch.size > 1) sizes.set(sub.consumer_id, sub.batch.size);
  }
  if (sizes.size === 0) return plan;
  const packed = new Map<string, (PlannedJob | PlannedBatchJob)[]>();
  for (const [consumerId, jobs] of plan) {
    const size = sizes.get(consumerId);
    if (!size || jobs.length === 1) {
      packed.set(consumerId, jobs);
      continue;
    }
    const out: (PlannedJob | PlannedBatchJob)[] = [];
    for (let from = 0; from < jobs.length; from += size) {
      const group = jobs.slice(from, from + size);
      if (group.length === 1) {
        out.push(group[0]);
        continue;
      }
      const { jobId: _single, ...opts } = group[0].opts;
      out.push({
        name: packNameOf(group),
        data: { batch: group.map((j) => j.data) },
        opts: { ...opts, jobId: batchJobIdFor(group.map((j) => j.data.id)) },
      });
    }
    packed.set(consumerId, out);
  }
  return packed;
}
