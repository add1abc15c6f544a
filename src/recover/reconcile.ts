import type pg from 'pg';
import { jobDataFor, jobIdFor, planJobs, type PlannedJob } from '../bridge/plan.js';
import { QueueSet } from '../bridge/queues.js';
import { inlinePayloadLimitOf, type Settings } from '../config.js';
import { RecoveryStore, pairKey, type OwedPair } from '../db/recovery.js';
import { createPool } from '../db/pool.js';
import { Store } from '../db/store.js';
import { UsageError } from '../errors.js';
import { assertChannel, assertConsumerId } from '../identifiers.js';
import { REDIS_STEP_TIMEOUT_MS, missingJobIds, notificationsInBatchJobs } from './job-presence.js';
import { silentLogger, type Logger } from '../log.js';
import { replayFailed } from './replay-failed.js';
import { closeRedis, createRedis, type RedisConnection, type RedisSettings } from '../redis.js';
import { withTimeout } from '../util.js';

/** Options of {@link reconcile}. */
export interface ReconcileOptions {
  settings: Pick<
    Settings,
    'databaseUrl' | 'redisUrl' | 'schema' | 'prefix' | 'inlinePayloadLimit'
  > &
    RedisSettings;
  /** Only rows of these channels (default: all). */
  channels?: string[];
  /**
   * Only deliveries to these consumers (default: all registered). Unbridged rows are still
   * bridged to every subscriber: a row is a job for all of its consumers or for none.
   */
  consumers?: string[];
  /** Only rows created at or after this time. */
  since?: Date;
  /** Also re-enqueue bridged rows whose job is gone from Redis and whose outcome is not in the ledger. */
  verify?: boolean;
  /** Also replay failed deliveries (dead letters) of the chosen consumers. */
  failed?: boolean;
  /** Count what would be done; change nothing. */
  dryRun?: boolean;
  /** Rows per page and per transaction (default 1000). */
  batchSize?: number;
  logger?: Logger;
  /** Stops between two pages when aborted (the result then covers what was done). */
  signal?: AbortSignal;
}

/**
 * What {@link reconcile} found and did. "Deliveries" are (consumer, notification) pairs.
 * With `dryRun`, `enqueued`, `bridged` and `replayed` count what would have been done.
 */
export interface ReconcileResult {
  /** Notification rows read, plus failed deliveries examined with `failed`. */
  scanned: number;
  /** Jobs added to BullMQ or failed jobs retried (every one carries `isReplay: true`). */
  enqueued: number;
  /** Deliveries whose job already exists in Redis (waiting, active, completed, ...): left alone. */
  alreadyQueued: number;
  /** Deliveries the ledger shows completed: never enqueued again. */
  alreadyDone: number;
  /** Unbridged rows this run bridged (claimed, enqueued for every subscriber, marked). */
  bridged: number;
  /** Failed deliveries replayed (part of `enqueued`). */
  replayed: number;
  /** Deliveries the ledger shows failed that were left alone (replay them with `failed`). */
  deadLetters: number;
  /** Failed deliveries that could not be replayed: the job is gone and the row was deleted. */
  unreplayable: number;
  dryRun: boolean;
  durationMs: number;
}

/** Counters every phase adds to. */
export type ReconcileCounts = Omit<ReconcileResult, 'dryRun' | 'durationMs'>;

/** What the phases share: connections, stores, and the run's settings. */
export interface ReconcileDeps {
  pool: pg.Pool;
  redis: RedisConnection;
  queues: QueueSet;
  store: Store;
  recovery: RecoveryStore;
  log: Logger;
  batchSize: number;
  dryRun: boolean;
  /** Payloads over this many bytes go into jobs by reference (see `jobDataFor`). */
  inlinePayloadLimit: number;
  signal?: AbortSignal;
}

/** Which rows and consumers a run covers (null: all). */
export interface ReconcileScope {
  channels: string[] | null;
  consumers: string[] | null;
  since: Date | null;
}

/**
 * Claim loops that run at once, so some wait on Postgres while others wait on Redis (4 ran about
 * 20% faster than 2 on a busy 2-core machine; the process is mostly waiting, not computing).
 */
const BRIDGE_LOOPS = 4;

/** Pages of owed rows checked and enqueued at once (see {@link scanOwed}). */
const PAGE_CONCURRENCY = 3;

function emptyCounts(): ReconcileCounts {
  return {
    scanned: 0,
    enqueued: 0,
    alreadyQueued: 0,
    alreadyDone: 0,
    bridged: 0,
    replayed: 0,
    deadLetters: 0,
    unreplayable: 0,
  };
}

function aborted(d: ReconcileDeps): boolean {
  return d.signal?.aborted === true;
}

/**
 * Enqueues every stored notification that never became a job (and, with `verify` / `failed`,
 * the ones whose job vanished and the failed ones), with the bridge's job ids, so nothing is lost
 * and nothing the ledger shows completed runs again. Safe while listeners and workers run:
 * unbridged rows go through the listener's claim (`FOR UPDATE SKIP LOCKED`), and a job id that
 * already exists is never added twice. Streams in keyset pages: memory stays flat.
 */
export async function reconcile(options: ReconcileOptions): Promise<ReconcileResult> {
  const batchSize = options.batchSize ?? 1000;
  if (!Number.isInteger(batchSize) || batchSize < 1) {
    throw new UsageError(`batch-size must be a positive integer, got ${options.batchSize}`);
  }
  for (const channel of options.channels ?? []) assertChannel(channel);
  for (const id of options.consumers ?? []) assertConsumerId(id);
  if (options.since && Number.isNaN(options.since.getTime())) {
    throw new UsageError('since must be a valid date');
  }
  const log = options.logger ?? silentLogger();
  const { settings } = options;
  const pool = createPool(
    {
      connectionString: settings.databaseUrl,
      max: BRIDGE_LOOPS + 1,
      connectionTimeoutMillis: 10_000,
      application_name: 'pgq-bridge reconcile',
      // A stalled run must not hold claimed rows for long: Postgres ends the transaction.
      idle_in_transaction_session_timeout: 60_000,
    },
    log,
    'reconcile',
  );
  const redis = createRedis(settings, log, 'reconcile');
  const queues = new QueueSet(redis, settings);
  try {
    // Fail fast (exit 1) rather than wait forever when Redis is down.
    await withTimeout(redis.ping(), REDIS_STEP_TIMEOUT_MS, 'Redis did not answer');
    const deps: ReconcileDeps = {
      pool,
      redis,
      queues,
      store: new Store(settings.schema),
      recovery: new RecoveryStore(settings.schema),
      log,
      batchSize,
      dryRun: options.dryRun === true,
      inlinePayloadLimit: inlinePayloadLimitOf(settings),
      signal: options.signal,
    };
    return await runReconcile(deps, options);
  } finally {
    await withTimeout(queues.close(), 5000, 'closing queues').catch(() => undefined);
    await withTimeout(closeRedis(redis), 5000, 'closing Redis').catch(() => redis.disconnect());
    await pool.end();
  }
}

async function runReconcile(d: ReconcileDeps, options: ReconcileOptions): Promise<ReconcileResult> {
  const started = Date.now();
  const channels = options.channels?.length ? [...new Set(options.channels)] : null;
  const consumers = options.consumers?.length ? [...new Set(options.consumers)] : null;
  if (consumers) {
    const known = new Set(await d.recovery.consumerIds(d.pool));
    const unknown = consumers.filter((id) => !known.has(id));
    if (unknown.length > 0) {
      throw new UsageError(
        `unknown consumer${unknown.length > 1 ? 's' : ''}: ${unknown.join(', ')} ` +
          `(registered: ${[...known].join(', ') || 'none'})`,
      );
    }
  }
  const scope: ReconcileScope = { channels, consumers, since: options.since ?? null };
  const c = emptyCounts();
  await bridgeUnbridged(d, scope, c);
  await scanOwed(d, scope, options.verify === true, c);
  if (options.failed) await replayFailed(d, scope, c);
  const result = { ...c, dryRun: d.dryRun, durationMs: Date.now() - started };
  d.log.debug(result, d.dryRun ? 'reconcile dry run finished' : 'reconcile finished');
  return result;
}

/** Options of {@link playback}. */
export interface PlaybackOptions {
  pool: pg.Pool;
  redis: RedisConnection;
  settings: Pick<Settings, 'schema' | 'prefix' | 'redisUrl' | 'inlinePayloadLimit'> & RedisSettings;
  /** Consumers whose pending playback to run. */
  consumers: string[];
  batchSize?: number;
  logger?: Logger;
  signal?: AbortSignal;
}

/**
 * Plays stored notifications to consumers whose subscriptions were created after those rows were
 * bridged (a new consumer with `startFrom: 'beginning'`): the playback part of reconcile, on the
 * caller's connections. The worker runs it right after registering new subscriptions; if it is
 * interrupted, the next `reconcile` finishes it.
 * @internal
 */
export async function playback(options: PlaybackOptions): Promise<ReconcileResult> {
  const started = Date.now();
  const queues = new QueueSet(options.redis, options.settings);
  const d: ReconcileDeps = {
    pool: options.pool,
    redis: options.redis,
    queues,
    store: new Store(options.settings.schema),
    recovery: new RecoveryStore(options.settings.schema),
    log: options.logger ?? silentLogger(),
    batchSize: options.batchSize ?? 1000,
    dryRun: false,
    inlinePayloadLimit: inlinePayloadLimitOf(options.settings),
    signal: options.signal,
  };
  const c = emptyCounts();
  try {
    await scanOwed(d, { channels: null, consumers: options.consumers, since: null }, false, c);
  } finally {
    await queues.close();
  }
  return { ...c, dryRun: false, durationMs: Date.now() - started };
}

/**
 * Drops from `plan` the deliveries the ledger shows completed and those whose job already
 * exists in Redis, counting both.
 */
async function withoutDoneOrQueued(
  d: ReconcileDeps,
  plan: Map<string, PlannedJob[]>,
  completed: Set<string>,
  c: ReconcileCounts,
): Promise<Map<string, PlannedJob[]>> {
  const out = new Map<string, PlannedJob[]>();
  for (const [consumerId, jobs] of plan) {
    const open = jobs.filter((job) => !completed.has(pairKey(consumerId, job.data.id)));
    c.alreadyDone += jobs.length - open.length;
    const missing = await missingJobIds(
      d.redis,
      d.queues.get(consumerId),
      open.map((job) => job.opts.jobId as string),
      !d.dryRun,
    );
    const toAdd = open.filter((job) => missing.has(job.opts.jobId as string));
    c.alreadyQueued += open.length - toAdd.length;
    if (toAdd.length > 0) out.set(consumerId, toAdd);
  }
  return out;
}

/** Jobs per `addBulk` call; see {@link addInChunks}. */
const ADD_CHUNK = 100;

/**
 * Adds the planned jobs in `addBulk` calls of {@link ADD_CHUNK}, one after another: each call is
 * one MULTI that Redis runs without serving anyone else, so small calls keep the workers'
 * commands (and a live listener's batches) flowing while reconcile adds a million jobs; the cost
 * is a few sub-millisecond round trips per batch. Returns the number of jobs added.
 */
async function addInChunks(d: ReconcileDeps, plan: Map<string, PlannedJob[]>): Promise<number> {
  let count = 0;
  for (const [consumerId, jobs] of plan) {
    const queue = d.queues.get(consumerId);
    for (let i = 0; i < jobs.length; i += ADD_CHUNK) {
      await queue.addBulk(jobs.slice(i, i + ADD_CHUNK));
    }
    count += jobs.length;
  }
  return count;
}

function countJobs(plan: Map<string, PlannedJob[]>): number {
  let n = 0;
  for (const jobs of plan.values()) n += jobs.length;
  return n;
}

/** Case "listener down": unbridged rows become jobs for every subscriber, then are marked. */
async function bridgeUnbridged(
  d: ReconcileDeps,
  scope: ReconcileScope,
  c: ReconcileCounts,
): Promise<void> {
  if (d.dryRun) {
    await countUnbridged(d, scope, c);
    return;
  }
  const loop = async (): Promise<void> => {
    while (!aborted(d)) {
      if ((await bridgeBatch(d, scope, c)) < d.batchSize) return;
    }
  };
  await Promise.all(Array.from({ length: BRIDGE_LOOPS }, loop));
}

/**
 * The listener's batch, with replay-flagged jobs and the ledger consulted: claim (SKIP LOCKED),
 * add the jobs, commit. A failure rolls back and leaves the rows unbridged; ids dedupe a retry.
 */
async function bridgeBatch(
  d: ReconcileDeps,
  scope: ReconcileScope,
  c: ReconcileCounts,
): Promise<number> {
  const client = await d.pool.connect();
  let committed = false;
  let broken: Error | undefined;
  try {
    await client.query('BEGIN');
    await d.recovery.relaxCommit(client);
    const subscriptions = await d.store.readSubscriptionsLocked(client);
    const rows = await d.recovery.claimUnbridged(client, d.batchSize, scope.channels, scope.since);
    const batch = emptyCounts();
    if (rows.length > 0) {
      const completed = await d.recovery.completedPairs(
        client,
        rows.map((r) => r.id),
      );
      const plan = await withoutDoneOrQueued(
        d,
        planJobs(rows, subscriptions, true, d.inlinePayloadLimit),
        completed,
        batch,
      );
      batch.enqueued = await withTimeout(
        addInChunks(d, plan),
        REDIS_STEP_TIMEOUT_MS,
        'Redis did not accept the batch in time',
      );
    }
    await client.query('COMMIT');
    committed = true;
    c.scanned += rows.length;
    c.bridged += rows.length;
    c.enqueued += batch.enqueued;
    c.alreadyDone += batch.alreadyDone;
    c.alreadyQueued += batch.alreadyQueued;
    return rows.length;
  } catch (error) {
    broken = error instanceof Error ? error : new Error(String(error));
    throw error;
  } finally {
    if (!committed) await client.query('ROLLBACK').catch(() => undefined);
    client.release(broken);
  }
}

/** Dry run of {@link bridgeUnbridged}: pages through unbridged rows without claiming them. */
async function countUnbridged(
  d: ReconcileDeps,
  scope: ReconcileScope,
  c: ReconcileCounts,
): Promise<void> {
  const subscriptions = await d.store.readSubscriptions(d.pool);
  let last = '0';
  while (!aborted(d)) {
    const page = await d.recovery.unbridgedPage(
      d.pool,
      last,
      d.batchSize,
      scope.channels,
      scope.since,
    );
    if (page.length === 0) return;
    last = page[page.length - 1].id;
    const rows = page.map((r) => ({
      ...r,
      payload: 'null',
      context: null,
      created_at: new Date(0),
    }));
    const completed = await d.recovery.completedPairs(
      d.pool,
      rows.map((r) => r.id),
    );
    const plan = await withoutDoneOrQueued(
      d,
      planJobs(rows, subscriptions, true, d.inlinePayloadLimit),
      completed,
      c,
    );
    c.enqueued += countJobs(plan);
    c.scanned += page.length;
    c.bridged += page.length;
    if (page.length < d.batchSize) return;
  }
}

/**
 * Bridged rows a consumer is owed but may never have received as a job. Always: playback, the
 * rows bridged before its subscription existed (within the subscription's playback range). With
 * `verify`: every owed bridged row whose job is gone from Redis and whose outcome is not in the
 * ledger (Redis restarted without persistence, wiped, or evicting).
 */
async function scanOwed(
  d: ReconcileDeps,
  scope: ReconcileScope,
  verify: boolean,
  c: ReconcileCounts,
): Promise<void> {
  const subscriptions = await d.recovery.subscriptions(d.pool, scope.consumers, scope.channels);
  const pendingPlayback = subscriptions.filter(
    (s) => BigInt(s.playback_through_id) > BigInt(s.after_id),
  );
  const active = verify ? subscriptions : pendingPlayback;
  if (active.length === 0) return;
  let last = active.map((s) => BigInt(s.after_id)).reduce((a, b) => (b < a ? b : a));
  const through = verify
    ? null
    : pendingPlayback.map((s) => BigInt(s.playback_through_id)).reduce((a, b) => (b > a ? b : a));
  const channels = [...new Set(active.map((s) => s.channel))];
  const consumers = [...new Set(active.map((s) => s.consumer_id))];
  const jobOptions = new Map(active.map((s) => [s.consumer_id, s.job_options]));
  // Batch consumers: notifications waiting inside batch jobs are queued, not lost.
  const inBatches = new Map<string, Set<string>>();
  for (const consumerId of new Set(active.filter((s) => s.is_batch).map((s) => s.consumer_id))) {
    inBatches.set(consumerId, await notificationsInBatchJobs(d.queues.get(consumerId)));
  }
  const started = Date.now();
  // Pages are read one after another (the keyset needs the previous page's end) but checked and
  // enqueued PAGE_CONCURRENCY at a time: Redis work of one page overlaps the reads of the next.
  const inFlight = new Set<Promise<void>>();
  let failure: { error: unknown } | undefined;
  while (!aborted(d) && !failure) {
    const pairs = await d.recovery.owedPage(d.pool, {
      afterId: last.toString(),
      throughId: through === null ? null : through.toString(),
      limit: d.batchSize,
      channels,
      consumers,
      since: scope.since,
      verify,
    });
    if (pairs.length === 0) break;
    const rowsInPage = new Set(pairs.map((p) => p.id)).size;
    last = BigInt(pairs[pairs.length - 1].id);
    c.scanned += rowsInPage;
    const task: Promise<void> = enqueueOwed(d, pairs, jobOptions, inBatches, c)
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
  // The whole playback range was covered: later runs skip it (--verify still checks the rows).
  if (!d.dryRun && scope.since === null && !aborted(d)) {
    for (const s of pendingPlayback) {
      await d.recovery.finishPlayback(d.pool, s.consumer_id, s.channel, s.playback_through_id);
    }
  }
  d.log.debug(
    { subscriptions: active.length, verify, ms: Date.now() - started },
    'owed rows scanned',
  );
}

/**
 * One page of owed pairs: counts the ones the ledger settles, checks the others' jobs in Redis,
 * and enqueues (as replays) those whose job is gone.
 */
async function enqueueOwed(
  d: ReconcileDeps,
  pairs: OwedPair[],
  jobOptions: Map<string, Record<string, unknown>>,
  inBatches: Map<string, Set<string>>,
  c: ReconcileCounts,
): Promise<void> {
  const toCheck = new Map<string, string[]>();
  for (const p of pairs) {
    if (p.consumer_id === null) continue;
    // 'skipped': given up with `pgq-bridge consumers skip`, as final as completed.
    if (p.status === 'completed' || p.status === 'skipped') c.alreadyDone++;
    else if (p.status === 'failed') c.deadLetters++;
    else if (inBatches.get(p.consumer_id)?.has(p.id)) c.alreadyQueued++;
    else {
      const ids = toCheck.get(p.consumer_id) ?? [];
      ids.push(p.id);
      toCheck.set(p.consumer_id, ids);
    }
  }
  const missing = new Map<string, string[]>();
  for (const [consumerId, ids] of toCheck) {
    const gone = await missingJobIds(
      d.redis,
      d.queues.get(consumerId),
      ids.map(jobIdFor),
      !d.dryRun,
    );
    c.alreadyQueued += ids.length - gone.size;
    if (gone.size > 0) {
      missing.set(
        consumerId,
        ids.filter((id) => gone.has(jobIdFor(id))),
      );
    }
  }
  if (missing.size === 0) return;
  const allIds = [...new Set([...missing.values()].flat())];
  const rows = new Map((await d.recovery.rowsByIds(d.pool, allIds)).map((r) => [r.id, r]));
  const plan = new Map<string, PlannedJob[]>();
  for (const [consumerId, ids] of missing) {
    const jobs: PlannedJob[] = [];
    for (const id of ids) {
      const row = rows.get(id);
      // Deleted meanwhile (cleanup --force): nothing left to deliver.
      if (!row) continue;
      jobs.push({
        name: row.channel,
        data: jobDataFor(row, true, d.inlinePayloadLimit),
        opts: { ...jobOptions.get(consumerId), jobId: jobIdFor(id) },
      });
    }
    if (jobs.length > 0) plan.set(consumerId, jobs);
  }
  // Not `c.enqueued += await ...`: that reads the counter before the await, and pages run
  // concurrently.
  const added = d.dryRun
    ? countJobs(plan)
    : await withTimeout(
        addInChunks(d, plan),
        REDIS_STEP_TIMEOUT_MS,
        'Redis did not accept the batch in time',
      );
  c.enqueued += added;
}
