import type { Job, JobType, Queue } from 'bullmq';
import pg from 'pg';
import { sessionSettings } from '../db/pool.js';
import type { Settings } from '../config.js';
import { OperationsQueries, type Backlog } from '../db/operations.js';
import type { Queryable } from '../db/store.js';
import { assertSchemaCurrent } from './checks.js';
import { silentLogger, type Logger } from '../log.js';
import {
  closeRedis,
  createRedis,
  queuePrefix,
  type RedisConnection,
  type RedisSettings,
} from '../redis.js';
import { withTimeout } from '../util.js';
import { openConsumerQueue } from '../queue-layout.js';
import { OrderingSql, type DeadLetterMode } from '../db/ordering.js';
import { blockedKeysStatus, formatBlockedKeys, type BlockedKeysStatus } from './blocked-keys.js';

/** Job counts of one consumer queue, by BullMQ state. */
export interface JobCounts {
  waiting: number;
  active: number;
  delayed: number;
  prioritized: number;
  failed: number;
  completed: number;
}

/** What `status` reports for one consumer. */
export interface ConsumerStatus {
  id: string;
  channels: string[];
  counts: JobCounts;
  /**
   * Seconds since the oldest notification still waiting, delayed or active in this consumer's
   * queue was stored; null when the queue has nothing unfinished.
   */
  oldestUnfinishedAgeSeconds: number | null;
  /**
   * The BullMQ key prefix of this consumer's queue: the configured prefix on a single Redis,
   * `{<prefix>:<consumer>}` on a Redis Cluster (one hash tag per queue).
   */
  keyPrefix: string;
  /** `host:pid` of the worker that last registered or heartbeated this consumer. */
  lastSeenWorker: string | null;
  /** ISO time of that. */
  lastSeenAt: string | null;
  /** How the consumer orders its deliveries (its `ordered` option), null when it does not. */
  ordered?: DeadLetterMode | null;
  /** For `onDeadLetter: 'block'` consumers: the keys their dead letters block; else null. */
  blockedKeys?: BlockedKeysStatus | null;
}

/** The result of {@link status}. */
export interface StatusReport {
  schema: string;
  /** The configured BullMQ key prefix (each queue's own is in `consumers[].keyPrefix`). */
  prefix: string;
  /** ISO time the report was taken. */
  checkedAt: string;
  backlog: Backlog;
  consumers: ConsumerStatus[];
  /** The `maxLagSeconds` the report was judged against, if any. */
  maxLagSeconds: number | null;
  /** False when the oldest unbridged row is older than `maxLagSeconds`. */
  healthy: boolean;
  /** Why it is not healthy (empty when healthy). */
  problems: string[];
}

/** Options of {@link status}. */
export interface StatusOptions {
  settings: Pick<Settings, 'databaseUrl' | 'schema' | 'prefix'> & RedisSettings;
  /** The report is unhealthy when the oldest unbridged row is older than this many seconds. */
  maxLagSeconds?: number;
  /** Reuse this Postgres connection (default: a short-lived one). */
  db?: Queryable;
  /** Reuse this Redis connection (default: a short-lived one). */
  redis?: RedisConnection;
  /** Bound on the Redis part, in ms (default 10 s): a down Redis fails the call instead of hanging. */
  timeoutMs?: number;
  logger?: Logger;
}

const STATES: JobType[] = ['waiting', 'active', 'delayed', 'prioritized', 'failed', 'completed'];

function ageSeconds(job: Job, now: number): number {
  const created = Date.parse((job.data as { createdAt?: string } | undefined)?.createdAt ?? '');
  const since = Number.isFinite(created) ? created : job.timestamp;
  return Math.max(0, (now - since) / 1000);
}

/** Counts and oldest unfinished age of one consumer queue. */
export async function queueFigures(
  queue: Queue,
  now = Date.now(),
): Promise<{ counts: JobCounts; oldestUnfinishedAgeSeconds: number | null }> {
  const [raw, heads] = await Promise.all([
    queue.getJobCounts(...STATES),
    // The first job of each unfinished state, oldest first: enough to find the oldest overall.
    queue.getJobs(['active', 'wait', 'prioritized', 'delayed'], 0, 0, true),
  ]);
  const counts = Object.fromEntries(STATES.map((s) => [s, raw[s] ?? 0])) as unknown as JobCounts;
  const ages = heads.filter((job): job is Job => Boolean(job)).map((job) => ageSeconds(job, now));
  return { counts, oldestUnfinishedAgeSeconds: ages.length ? Math.max(...ages) : null };
}

/**
 * Takes the health snapshot of `pgq-bridge status`: the backlog of unbridged rows, and per
 * consumer its channels, BullMQ job counts, oldest unfinished job and last seen worker.
 */
export async function status(options: StatusOptions): Promise<StatusReport> {
  const { settings } = options;
  const log = options.logger ?? silentLogger();
  const ownDb = options.db === undefined;
  const db: Queryable =
    options.db ??
    new pg.Client({
      connectionString: settings.databaseUrl,
      connectionTimeoutMillis: 10_000,
      application_name: 'pgq-bridge status',
      ...sessionSettings('operate'),
    });
  const ownRedis = options.redis === undefined;
  const redis = options.redis ?? createRedis(settings, log, 'status');
  const queries = new OperationsQueries(settings.schema);
  try {
    if (ownDb) await (db as pg.Client).connect();
    await assertSchemaCurrent(db, settings.schema);
    const [backlog, consumers] = await Promise.all([
      queries.backlog(db),
      queries.listConsumers(db),
    ]);
    const ordering = await new OrderingSql(settings.schema).orderingOfConsumers(db);
    const now = Date.now();
    const figures = await withTimeout(
      Promise.all(
        consumers.map(async (c) => {
          const queue = openConsumerQueue(redis, settings, c.id);
          try {
            return await queueFigures(queue, now);
          } finally {
            await queue.close().catch(() => undefined);
          }
        }),
      ),
      options.timeoutMs ?? 10_000,
      'Redis did not answer',
    );
    const maxLag = options.maxLagSeconds ?? null;
    const problems: string[] = [];
    if (maxLag !== null && backlog.oldestAgeSeconds !== null && backlog.oldestAgeSeconds > maxLag) {
      problems.push(
        `the oldest unbridged notification is ${backlog.oldestAgeSeconds.toFixed(1)} s old (max lag ${maxLag} s): is a listener running?`,
      );
    }
    return {
      schema: settings.schema,
      prefix: settings.prefix,
      checkedAt: new Date(now).toISOString(),
      backlog,
      consumers: consumers.map((c, i) => ({
        id: c.id,
        channels: c.channels,
        keyPrefix: queuePrefix(settings, c.id),
        counts: figures[i].counts,
        oldestUnfinishedAgeSeconds: figures[i].oldestUnfinishedAgeSeconds,
        lastSeenWorker: c.lastSeenWorker,
        lastSeenAt: c.lastSeenAt ? c.lastSeenAt.toISOString() : null,
        ordered: ordering.get(c.id)?.mode ?? null,
        blockedKeys:
          ordering.get(c.id)?.mode === 'block'
            ? blockedKeysStatus(ordering.get(c.id)?.blocked)
            : null,
      })),
      maxLagSeconds: maxLag,
      healthy: problems.length === 0,
      problems,
    };
  } finally {
    if (ownRedis) await closeRedis(redis);
    if (ownDb) await (db as pg.Client).end().catch(() => undefined);
  }
}

function seconds(value: number | null): string {
  if (value === null) return '-';
  if (value < 60) return `${value.toFixed(1)}s`;
  if (value < 3600) return `${(value / 60).toFixed(1)}m`;
  return `${(value / 3600).toFixed(1)}h`;
}

/** Renders a report as the human-readable text of `pgq-bridge status`. */
export function formatStatus(report: StatusReport): string {
  const lines = [
    `schema ${report.schema}, prefix ${report.prefix}, at ${report.checkedAt}`,
    `backlog: ${report.backlog.count} unbridged, oldest ${seconds(report.backlog.oldestAgeSeconds)}`,
  ];
  if (report.consumers.length === 0) {
    lines.push('no consumers registered (start `pgq-bridge work`)');
  } else {
    const header = [
      'consumer',
      'channels',
      'waiting',
      'active',
      'delayed',
      'failed',
      'completed',
      'oldest',
      'last seen',
    ];
    const rows = report.consumers.map((c) => [
      c.id,
      c.channels.join(','),
      String(c.counts.waiting + c.counts.prioritized),
      String(c.counts.active),
      String(c.counts.delayed),
      String(c.counts.failed),
      String(c.counts.completed),
      seconds(c.oldestUnfinishedAgeSeconds),
      c.lastSeenWorker ? `${c.lastSeenWorker} at ${c.lastSeenAt}` : '-',
    ]);
    const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i].length)));
    for (const row of [header, ...rows]) {
      lines.push(
        row
          .map((cell, i) => cell.padEnd(widths[i]))
          .join('  ')
          .trimEnd(),
      );
    }
  }
  lines.push(...formatBlockedKeys(report.consumers));
  lines.push(report.healthy ? 'healthy' : `UNHEALTHY: ${report.problems.join('; ')}`);
  return lines.join('\n') + '\n';
}
