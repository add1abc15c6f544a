import { runBatch } from '../bridge/batch.js';
import { jobIdFor } from '../bridge/plan.js';
import type { OwedPair } from '../db/owed-sql.js';
import { pairKey } from '../db/rows.js';
import {
  ADD_CHUNK,
  aborted,
  type ReconcileCounts,
  type ReconcileDeps,
  type ReconcileScope,
} from './context.js';
import { BatchMembership, missingJobIds } from './job-presence.js';

/** Pages of owed rows checked and enqueued at once (Redis work of one overlaps the next read). */
const PAGE_CONCURRENCY = 3;

/**
 * `reconcile --verify`: every owed bridged row whose job is gone from Redis (or sits in no BullMQ
 * state) and whose outcome is not in the ledger — Redis restarted without persistence, wiped,
 * evicting — is enqueued again as a replay, through the bridging routine.
 *
 * Safe beside live workers: a delivery is re-enqueued only if, after its page was read, it has no
 * live `n<id>` job, is in no live or recently finished batch job (looked up after the page was
 * read, not once before the walk), and the ledger, asked again right before the add, still has no
 * outcome for it.
 */
export async function verifyOwed(
  d: ReconcileDeps,
  scope: ReconcileScope,
  c: ReconcileCounts,
): Promise<void> {
  const subscriptions = await d.recovery.subscriptions(d.pool, scope.consumers, scope.channels);
  if (subscriptions.length === 0) return;
  let last = subscriptions.map((s) => BigInt(s.walk_from_id)).reduce((a, b) => (b < a ? b : a));
  const channels = [...new Set(subscriptions.map((s) => s.channel))];
  const consumers = [...new Set(subscriptions.map((s) => s.consumer_id))];
  const batches = new Map<string, BatchMembership>();
  for (const s of subscriptions) {
    if (s.is_batch && !batches.has(s.consumer_id)) {
      batches.set(s.consumer_id, new BatchMembership(d.redis, d.queues.get(s.consumer_id)));
    }
  }
  const started = Date.now();
  const inFlight = new Set<Promise<void>>();
  let failure: { error: unknown } | undefined;
  while (!aborted(d) && !failure) {
    const pairs = await d.owed.owedPage(d.pool, {
      afterId: last.toString(),
      limit: d.batchSize,
      channels,
      consumers,
      since: scope.since,
    });
    if (pairs.length === 0) break;
    const rowsInPage = new Set(pairs.map((p) => p.id)).size;
    last = BigInt(pairs[pairs.length - 1].id);
    c.scanned += rowsInPage;
    const task: Promise<void> = verifyPage(d, pairs, batches, c)
      .catch((error: unknown) => {
        failure ??= { error };
      })
      .finally(() => inFlight.delete(task));
    inFlight.add(task);
    if (inFlight.size >= PAGE_CONCURRENCY) await Promise.race(inFlight);
    if (rowsInPage < d.batchSize) break;
  }
  await Promise.all(inFlight);
  if (failure) throw failure.error;
  d.log.debug(
    { subscriptions: subscriptions.length, ms: Date.now() - started },
    'owed rows verified',
  );
}

/** One page: the ledger settles most pairs; the rest go through the routine's Redis checks. */
async function verifyPage(
  d: ReconcileDeps,
  pairs: OwedPair[],
  batches: Map<string, BatchMembership>,
  c: ReconcileCounts,
): Promise<void> {
  const open = new Map<string, Set<string>>();
  for (const p of pairs) {
    if (p.consumer_id === null) continue;
    // 'skipped': given up with `pgq-bridge consumers skip`, as final as completed.
    if (p.status === 'completed' || p.status === 'skipped') c.alreadyDone++;
    else if (p.status === 'failed') c.deadLetters++;
    else {
      const consumers = open.get(p.id) ?? new Set<string>();
      consumers.add(p.consumer_id);
      open.set(p.id, consumers);
    }
  }
  if (open.size === 0) return;
  const missing = async (consumerId: string, jobIds: string[]): Promise<Set<string>> => {
    let gone = await missingJobIds(d.redis, d.queues.get(consumerId), jobIds, !d.dryRun);
    const membership = batches.get(consumerId);
    if (membership && gone.size > 0) {
      const ids = [...gone].map((jobId) => jobId.slice(1));
      const held = await membership.heldAmong(ids);
      gone = new Set([...gone].filter((jobId) => !held.has(jobId.slice(1))));
    }
    if (gone.size === 0) return gone;
    // Asked again right before the add: a worker may have finished it since the page was read.
    const ids = [...gone].map((jobId) => jobId.slice(1));
    const done = await d.recovery.completedPairs(d.pool, ids);
    return new Set(ids.filter((id) => !done.has(pairKey(consumerId, id))).map(jobIdFor));
  };
  if (d.dryRun) {
    for (const [consumerId, jobIds] of byConsumer(open)) {
      const gone = await missing(consumerId, jobIds);
      c.alreadyQueued += jobIds.length - gone.size;
      c.enqueued += gone.size;
    }
    return;
  }
  const rows = await d.recovery.rowsByIds(d.pool, [...open.keys()]);
  const batch = await runBatch(d.batch, {
    // Rows deleted meanwhile (cleanup --force) are simply absent: nothing left to deliver.
    rows: { read: () => Promise.resolve({ rows, deliveries: open }) },
    replay: true,
    consumers: null,
    missing,
    addChunk: ADD_CHUNK,
  });
  c.alreadyQueued += batch.alreadyQueued;
  c.alreadyDone += batch.alreadyDone;
  c.enqueued += batch.deliveries;
}

function byConsumer(open: Map<string, Set<string>>): Map<string, string[]> {
  const out = new Map<string, string[]>();
  for (const [id, consumers] of open) {
    for (const consumerId of consumers) {
      const list = out.get(consumerId) ?? [];
      list.push(jobIdFor(id));
      out.set(consumerId, list);
    }
  }
  return out;
}
