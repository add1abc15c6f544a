import type pg from 'pg';
import type { BridgeStore, ClaimSpec } from '../db/bridge-sql.js';
import { pairKey, type NotificationRow, type SubscriptionRow } from '../db/rows.js';
import { packBatches } from './pack.js';
import { planJobs, type PlannedJob } from './plan.js';
import type { QueueSet } from './queues.js';
import { traceBridgeBatch } from './tracing.js';

/** Which rows a batch turns into jobs. */
export type BatchRows =
  /** Unbridged rows, claimed (FOR UPDATE SKIP LOCKED) and marked bridged: listener, reconcile. */
  | { claim: ClaimSpec }
  /** Rows read inside the batch's transaction, not marked: playback and verify of bridged rows. */
  | { read: (client: pg.PoolClient, subscriptions: SubscriptionRow[]) => Promise<ReadRows> };

/** What a `read` batch found: the rows, and which consumers each one is owed to. */
export interface ReadRows {
  rows: NotificationRow[];
  /** Notification id → consumer ids owed it (decided in SQL). */
  deliveries: ReadonlyMap<string, ReadonlySet<string>>;
}

/** What differs between the callers of {@link runBatch}. */
export interface BatchSpec {
  rows: BatchRows;
  /** Mark the jobs as replays (the worker then checks the ledger first; handlers see isReplay). */
  replay: boolean;
  /** Only deliveries to these consumers (null: every subscriber). */
  consumers: ReadonlySet<string> | null;
  /**
   * (consumer, notification) pairs the ledger shows completed, as `pairKey`s (db/recovery.ts):
   * those are never enqueued again. Absent: no lookup (the listener's hot path).
   */
  completed?: (client: pg.PoolClient, ids: string[]) => Promise<Set<string>>;
  /**
   * Of `jobIds` of one consumer, those with no live job in Redis (reconcile: see
   * recover/job-presence.ts); only those are added. Absent: add all (ids dedupe).
   */
  missing?: (consumerId: string, jobIds: string[]) => Promise<Set<string>>;
  /** Runs in the transaction after the jobs were added, before COMMIT (playback's cursor). */
  beforeCommit?: (client: pg.PoolClient, rows: NotificationRow[]) => Promise<void>;
  /** Jobs per addBulk call (see QueueSet.addAll). */
  addChunk?: number;
}

/** The connections and settings every batch shares. */
export interface BatchContext {
  pool: pg.Pool;
  store: BridgeStore;
  queues: QueueSet;
  /** How long Redis may take to accept a batch before the transaction rolls back. */
  enqueueTimeoutMs: number;
  /** Payloads over this many bytes go into jobs by reference (see `jobDataFor`). */
  inlinePayloadLimit: number;
}

/** What one batch did. */
export interface BatchResult {
  rows: NotificationRow[];
  subscriptions: SubscriptionRow[];
  /** Jobs added (a packed batch job counts once). */
  jobs: number;
  /** (consumer, notification) deliveries those jobs carry. */
  deliveries: number;
  /** Deliveries left out because the ledger shows them completed. */
  alreadyDone: number;
  /** Deliveries left out because their job still lives in Redis. */
  alreadyQueued: number;
}

type Jobs = Map<string, PlannedJob[]>;

/**
 * The one bridging routine: rows to jobs, for the listener, reconcile and playback. In one
 * transaction: BEGIN + shared subscriptions lock + subscriptions (+ the claim, in the same round
 * trip), plan the deliveries (fan-out, commit-order boundaries), drop what the ledger or Redis
 * already has (when asked), pack batch consumers' jobs, add them to Redis (bounded by the enqueue
 * timeout), then COMMIT. A failure rolls back: claimed rows are unbridged again, and job ids
 * dedupe the retry.
 */
export async function runBatch(ctx: BatchContext, spec: BatchSpec): Promise<BatchResult> {
  const client = await ctx.pool.connect();
  let committed = false;
  let broken: Error | undefined;
  // A checked-out client has no pool 'error' listener: without this one, the connection dying
  // mid-batch (e.g. a Postgres restart) would crash the process instead of failing the batch.
  const onError = (error: Error): void => {
    broken = error;
  };
  client.on('error', onError);
  try {
    let subscriptions: SubscriptionRow[];
    let rows: NotificationRow[];
    let deliveries: ReadonlyMap<string, ReadonlySet<string>> | undefined;
    if ('claim' in spec.rows) {
      ({ subscriptions, rows } = await ctx.store.beginClaim(client, spec.rows.claim));
    } else {
      subscriptions = await ctx.store.beginRead(client);
      ({ rows, deliveries } = await spec.rows.read(client, subscriptions));
    }
    const result: BatchResult = {
      rows,
      subscriptions,
      jobs: 0,
      deliveries: 0,
      alreadyDone: 0,
      alreadyQueued: 0,
    };
    const plan = planJobs(rows, subscriptions, {
      replay: spec.replay,
      consumers: spec.consumers,
      deliveries,
      inlinePayloadLimit: ctx.inlinePayloadLimit,
    });
    let jobs = plan.jobs;
    if (spec.completed && jobs.size > 0) {
      jobs = await withoutCompleted(
        jobs,
        await spec.completed(
          client,
          rows.map((r) => r.id),
        ),
        result,
      );
    }
    if (spec.missing && jobs.size > 0) jobs = await withoutQueued(jobs, spec.missing, result);
    for (const list of jobs.values()) result.deliveries += list.length;
    // Batch consumers get jobs of up to batch.size notifications (src/bridge/pack.ts).
    const packed = packBatches(jobs, subscriptions);
    const send = async (): Promise<void> => {
      if (packed.size > 0) {
        result.jobs = await ctx.queues.addAll(packed, {
          timeoutMs: ctx.enqueueTimeoutMs,
          chunk: spec.addChunk,
        });
      }
      await spec.beforeCommit?.(client, rows);
      await ctx.store.commit(client, plan.late);
      committed = true;
    };
    // In a span linked to the rows' writers when tracing is on (bridge/tracing.ts).
    if (rows.length > 0) await traceBridgeBatch(rows, send);
    else await send();
    return result;
  } catch (error) {
    broken = error instanceof Error ? error : new Error(String(error));
    throw error;
  } finally {
    if (!committed) await client.query('ROLLBACK').catch(() => undefined);
    // A connection that failed mid-transaction is discarded rather than reused.
    client.removeListener('error', onError);
    client.release(broken);
  }
}

function withoutCompleted(jobs: Jobs, completed: Set<string>, result: BatchResult): Jobs {
  if (completed.size === 0) return jobs;
  const out: Jobs = new Map();
  for (const [consumerId, list] of jobs) {
    const open = list.filter((job) => !completed.has(pairKey(consumerId, job.data.id)));
    result.alreadyDone += list.length - open.length;
    if (open.length > 0) out.set(consumerId, open);
  }
  return out;
}

async function withoutQueued(
  jobs: Jobs,
  missing: NonNullable<BatchSpec['missing']>,
  result: BatchResult,
): Promise<Jobs> {
  const out: Jobs = new Map();
  for (const [consumerId, list] of jobs) {
    const gone = await missing(
      consumerId,
      list.map((job) => job.opts.jobId as string),
    );
    const toAdd = list.filter((job) => gone.has(job.opts.jobId as string));
    result.alreadyQueued += list.length - toAdd.length;
    if (toAdd.length > 0) out.set(consumerId, toAdd);
  }
  return out;
}
