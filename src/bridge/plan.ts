import type { JobsOptions } from 'bullmq';
import type { NotificationRow, SubscriptionRow } from '../db/rows.js';
import type { LateDelivery } from '../db/bridge-sql.js';
import type { NotificationJobData } from '../consume/notification.js';
import { isOwed } from './boundary.js';

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

/** What {@link planJobs} may narrow. */
export interface PlanOptions {
  /** Mark the jobs as replays (reconcile, playback): the worker consults the ledger first. */
  replay?: boolean;
  /** Payloads over this many bytes go into jobs by reference (see {@link jobDataFor}). */
  inlinePayloadLimit?: number;
  /** Only deliveries to these consumers (null or absent: every subscriber). */
  consumers?: ReadonlySet<string> | null;
  /**
   * Exactly these deliveries: notification id → consumer ids, already found owed (by SQL, for
   * playback and verify). Without it, a subscription gets the rows its boundary says it is owed.
   */
  deliveries?: ReadonlyMap<string, ReadonlySet<string>>;
}

/** Jobs per consumer, plus the deliveries only the commit-order boundary made owed. */
export interface Plan {
  jobs: Map<string, PlannedJob[]>;
  late: LateDelivery[];
}

/** Fans rows out to the queues of their channel's subscribers: consumer id → jobs in id order. */
export function planJobs(
  rows: readonly NotificationRow[],
  subscriptions: readonly SubscriptionRow[],
  options: PlanOptions = {},
): Plan {
  const byChannel = new Map<string, SubscriptionRow[]>();
  for (const sub of subscriptions) {
    if (options.consumers && !options.consumers.has(sub.consumer_id)) continue;
    const list = byChannel.get(sub.channel) ?? [];
    list.push(sub);
    byChannel.set(sub.channel, list);
  }
  const jobs = new Map<string, PlannedJob[]>();
  const late: LateDelivery[] = [];
  for (const row of rows) {
    const subs = byChannel.get(row.channel);
    if (!subs) continue;
    const data = jobDataFor(row, options.replay === true, options.inlinePayloadLimit);
    const chosen = options.deliveries?.get(row.id);
    for (const sub of subs) {
      if (options.deliveries) {
        if (!chosen?.has(sub.consumer_id)) continue;
      } else {
        // A 'now' subscription is not owed the backlog stored (committed) before it registered.
        const owed = isOwed(row, sub);
        if (!owed) continue;
        if (owed === 'late')
          late.push({ consumerId: sub.consumer_id, channel: sub.channel, id: row.id });
      }
      const list = jobs.get(sub.consumer_id) ?? [];
      list.push({ name: row.channel, data, opts: { ...sub.job_options, jobId: jobIdFor(row.id) } });
      jobs.set(sub.consumer_id, list);
    }
  }
  return { jobs, late };
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
