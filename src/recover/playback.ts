import type pg from 'pg';
import { runBatch } from '../bridge/batch.js';
import { QueueSet } from '../bridge/queues.js';
import { inlinePayloadLimitOf, type Settings } from '../config.js';
import { pairKey, type NotificationRow } from '../db/rows.js';
import { silentLogger, type Logger } from '../log.js';
import { createRedis, type RedisConnection, type RedisSettings } from '../redis.js';
import {
  ADD_CHUNK,
  aborted,
  emptyCounts,
  makeDeps,
  type ReconcileCounts,
  type ReconcileDeps,
  type ReconcileScope,
} from './context.js';

/** Options of {@link playback}. */
export interface PlaybackOptions {
  pool: pg.Pool;
  redis: RedisConnection;
  settings: Pick<Settings, 'schema' | 'prefix' | 'redisUrl' | 'inlinePayloadLimit'> & RedisSettings;
  /** Consumers whose pending playback to run (those with none are skipped at the cost of a read). */
  consumers: string[];
  batchSize?: number;
  logger?: Logger;
  signal?: AbortSignal;
}

/**
 * Plays stored notifications to consumers whose subscriptions were created after those rows were
 * bridged (a new consumer with `startFrom: 'beginning'`), on the caller's Postgres pool. Every
 * `work` start runs it for its consumers: a playback interrupted by a crash resumes from its
 * cursor, and processes starting at once share the walk page by page (see {@link playPending}).
 * @internal
 */
export async function playback(
  options: PlaybackOptions,
): Promise<ReconcileCounts & { durationMs: number }> {
  const started = Date.now();
  const log = options.logger ?? silentLogger();
  const queues = new QueueSet(
    () => createRedis(options.settings, log, 'playback-enqueue'),
    options.settings,
  );
  const d = makeDeps({
    pool: options.pool,
    redis: options.redis,
    queues,
    schema: options.settings.schema,
    log,
    batchSize: options.batchSize ?? 1000,
    dryRun: false,
    inlinePayloadLimit: inlinePayloadLimitOf(options.settings),
    signal: options.signal,
  });
  const c = emptyCounts();
  try {
    await playPending(d, { channels: null, consumers: options.consumers, since: null }, c);
  } finally {
    await queues.close();
  }
  return { ...c, durationMs: Date.now() - started };
}

/**
 * Playback of every pending subscription in scope: rows bridged before the subscription existed
 * (within its playback range) become replay jobs for its consumer, through the bridging routine,
 * a page per transaction. Each transaction first locks the consumer's pending subscriptions and
 * reads their cursors, then adds the page's jobs and moves the cursors past the page before
 * COMMIT: a crash loses at most the page in flight (its jobs dedupe when it is played again), and
 * a second process waits for the lock and goes on after the first one's page. With `since` the
 * walk covers only newer rows, so the cursors stay where they are.
 */
export async function playPending(
  d: ReconcileDeps,
  scope: ReconcileScope,
  c: ReconcileCounts,
): Promise<void> {
  const subscriptions = await d.recovery.subscriptions(d.pool, scope.consumers, scope.channels);
  const consumers = [
    ...new Set(subscriptions.filter((s) => s.playback_pending).map((s) => s.consumer_id)),
  ];
  for (const consumerId of consumers) {
    if (aborted(d)) return;
    const started = Date.now();
    const before = c.enqueued;
    await playConsumer(d, consumerId, scope, c);
    d.log.debug(
      { consumer: consumerId, enqueued: c.enqueued - before, ms: Date.now() - started },
      'playback done',
    );
  }
}

async function playConsumer(
  d: ReconcileDeps,
  consumerId: string,
  scope: ReconcileScope,
  c: ReconcileCounts,
): Promise<void> {
  let last: bigint | null = null;
  let done = false;
  while (!done && !aborted(d)) {
    let end: string | null = null;
    let channels: string[] = [];
    const read = async (client: pg.PoolClient) => {
      const none = { rows: [] as NotificationRow[], deliveries: new Map<string, Set<string>>() };
      const pending = await d.owed.pendingPlayback(client, consumerId, scope.channels);
      let from = pending.map((p) => BigInt(p.from_id)).reduce((a, b) => (b < a ? b : a), -1n);
      const through = pending
        .map((p) => BigInt(p.through_id))
        .reduce((a, b) => (b > a ? b : a), 0n);
      if (last !== null && last > from) from = last;
      if (pending.length === 0 || from >= through) {
        done = true;
        return none;
      }
      channels = pending.map((p) => p.channel);
      const page = await d.owed.playbackPage(client, {
        consumerId,
        channels,
        fromId: from.toString(),
        throughId: through.toString(),
        limit: d.batchSize,
        since: scope.since,
      });
      c.scanned += page.pageRows;
      done = page.pageRows < d.batchSize;
      end = done || page.lastId === null ? through.toString() : page.lastId;
      last = BigInt(end);
      const deliveries = new Map(page.rows.map((r) => [r.id, new Set([consumerId])]));
      return { rows: page.rows, deliveries };
    };
    if (d.dryRun) {
      const client = await d.pool.connect();
      try {
        // Rolled back below: nothing moves. (Not READ ONLY: the pending subscriptions are read
        // FOR UPDATE, as in a real run.)
        await client.query('BEGIN');
        const { rows } = await read(client);
        const completed = await d.recovery.completedPairs(
          client,
          rows.map((r) => r.id),
        );
        const done = rows.filter((r) => completed.has(pairKey(consumerId, r.id))).length;
        c.alreadyDone += done;
        c.enqueued += rows.length - done;
      } finally {
        await client.query('ROLLBACK').catch(() => undefined);
        client.release();
      }
      continue;
    }
    const batch = await runBatch(d.batch, {
      rows: { read },
      replay: true,
      consumers: new Set([consumerId]),
      completed: (client, ids) => d.recovery.completedPairs(client, ids),
      beforeCommit: async (client) => {
        if (scope.since === null && end !== null) {
          await d.owed.advancePlayback(client, consumerId, channels, end);
        }
      },
      addChunk: ADD_CHUNK,
    });
    c.enqueued += batch.deliveries;
    c.alreadyDone += batch.alreadyDone;
  }
}
