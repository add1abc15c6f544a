import type { JobsOptions } from 'bullmq';
import type { NotificationRow, SubscriptionRow } from '../db/store.js';
import type { NotificationJobData } from '../consume/notification.js';

/** The id of a notification's job: derived from the notification id, so adding it twice is a no-op. */
export function jobIdFor(notificationId: string): string {
  // BullMQ refuses integer-looking custom ids and ids containing ':'.
  return `n${notificationId}`;
}

/** Whether a JSON text is larger than `limit` bytes (UTF-8), measuring only when in doubt. */
function overLimit(json: string, limit: number): boolean {
  if (json.length > limit) return true;
  // A UTF-16 unit is at most 3 bytes of UTF-8: below a third of the limit, no need to count.
  return json.length * 3 > limit && Buffer.byteLength(json, 'utf8') > limit;
}

/**
 * Turns one row into the job data every consumer's queue receives. A payload over
 * `inlinePayloadLimit` bytes stays in the row (`payloadRef`): it would otherwise be copied into
 * the job of every subscribed consumer; the worker reads it back by id (consume/payload-refs.ts).
 */
export function jobDataFor(
  row: NotificationRow,
  replay = false,
  inlinePayloadLimit = Infinity,
): NotificationJobData {
  const data: NotificationJobData = {
    id: row.id,
    channel: row.channel,
    context: row.context,
    createdAt: row.created_at.toISOString(),
  };
  if (overLimit(row.payload, inlinePayloadLimit)) data.payloadRef = true;
  else data.payload = row.payload;
  // Only keyed rows carry the field: unkeyed jobs stay as small as before.
  if (row.key != null) data.key = row.key;
  // Likewise the writer's trace context (src/consume/tracing.ts continues its trace).
  if (row.traceparent != null) data.traceparent = row.traceparent;
  if (row.tracestate != null) data.tracestate = row.tracestate;
  if (replay) data.replay = true;
  return data;
}

/** A job ready for `Queue.addBulk`. */
export interface PlannedJob {
  name: string;
  data: NotificationJobData;
  opts: JobsOptions;
}

/** Fans rows out to the queues of their channel's subscribers: consumer id → jobs in id order. */
export function planJobs(
  rows: NotificationRow[],
  subscriptions: SubscriptionRow[],
  replay = false,
  inlinePayloadLimit = Infinity,
): Map<string, PlannedJob[]> {
  const byChannel = new Map<string, SubscriptionRow[]>();
  for (const sub of subscriptions) {
    const list = byChannel.get(sub.channel) ?? [];
    list.push(sub);
    byChannel.set(sub.channel, list);
  }
  const plan = new Map<string, PlannedJob[]>();
  for (const row of rows) {
    const subs = byChannel.get(row.channel);
    if (!subs) continue;
    const data = jobDataFor(row, replay, inlinePayloadLimit);
    const id = BigInt(row.id);
    for (const sub of subs) {
      // A subscription is owed rows after its after_id: a 'now' consumer does not get the
      // backlog that was stored (but not yet bridged) before it registered.
      if (id <= BigInt(sub.after_id)) continue;
      const jobs = plan.get(sub.consumer_id) ?? [];
      jobs.push({ name: row.channel, data, opts: { ...sub.job_options, jobId: jobIdFor(row.id) } });
      plan.set(sub.consumer_id, jobs);
    }
  }
  return plan;
}

/** A claim never holds more rows than this, whatever a batch consumer asks for. */
const MAX_CLAIM = 5000;

/**
 * Rows per claim: the listener's batch size, raised to the largest `batch.size` of a batch
 * consumer (up to {@link MAX_CLAIM}) so that a backlog fills its batch jobs. Learned from the
 * subscriptions of the previous claim.
 */
export function claimLimitFor(
  batchSize: number,
  subscriptions: readonly SubscriptionRow[],
): number {
  let limit = batchSize;
  for (const sub of subscriptions) {
    if (sub.batch) limit = Math.max(limit, Math.min(sub.batch.size, MAX_CLAIM));
  }
  return limit;
}
