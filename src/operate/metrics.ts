import type { EventEmitter } from 'node:events';
import pg from 'pg';
import { sessionSettings } from '../db/pool.js';
import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client';
import { OperationsQueries } from '../db/operations.js';
import { redactSecrets, silentLogger, type Logger } from '../log.js';
import type { JobCounts } from './status.js';
import { errorMessage, withTimeout } from '../util.js';

/** How a handler run ended, as the worker reports it. */
export type JobOutcome = 'completed' | 'failed' | 'retried';

/** What the listener's `batch` event carries. */
export interface BatchEvent {
  /** Rows bridged by the batch. */
  rows: number;
  /** Jobs added (a row fans out to one job per subscribed consumer). */
  jobs: number;
  /** `created_at` of each row, in ms since the epoch. */
  createdAt?: number[];
  /** When the batch committed, in ms since the epoch. */
  committedAt?: number;
}

/** Options of {@link Metrics}. */
export interface MetricsOptions {
  /**
   * Database gauges (backlog, oldest unbridged age, notification queue usage), read at scrape
   * time through one connection of its own.
   */
  database?: { databaseUrl: string; schema: string };
  /** Job counts per consumer queue, read at scrape time (the board passes its queues). */
  queueCounts?: () => Promise<Array<{ consumer: string; counts: JobCounts }>>;
  /** Node.js process metrics (CPU, memory, event loop lag); default true. */
  processMetrics?: boolean;
  logger?: Logger;
}

const LATENCY_BUCKETS = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300];
const DURATION_BUCKETS = [0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60];
const BATCH_BUCKETS = [1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000];

/** The per-consumer children, bound once so the hot path does no label lookups. */
interface ConsumerSeries {
  completed: { inc(): void };
  failed: { inc(): void };
  retried: { inc(): void };
  duration: { observe(seconds: number): void };
}

/**
 * pgq-bridge's Prometheus metrics, on a registry of their own (so several services in one
 * process — `start` — share one, and an embedding app's global registry is left alone).
 * Event updates are counter increments and histogram observations; everything that needs a
 * query (backlog, notification queue usage, queue job counts) is read only when scraped.
 */
export class Metrics {
  readonly registry = new Registry();
  private readonly log: Logger;
  private readonly bridged: Counter;
  private readonly enqueued: Counter;
  private readonly batchSize: Histogram;
  private readonly latency: Histogram;
  private readonly completed: Counter<'consumer'>;
  private readonly failed: Counter<'consumer'>;
  private readonly retried: Counter<'consumer'>;
  private readonly duration: Histogram<'consumer'>;
  private readonly series = new Map<string, ConsumerSeries>();
  private pool: pg.Pool | undefined;

  constructor(private readonly options: MetricsOptions = {}) {
    this.log = options.logger ?? silentLogger();
    const registers = [this.registry];
    this.bridged = new Counter({
      name: 'pgq_bridge_notifications_bridged_total',
      help: 'Notifications turned into BullMQ jobs by this process',
      registers,
    });
    this.enqueued = new Counter({
      name: 'pgq_bridge_jobs_enqueued_total',
      help: 'Jobs added by the bridge (one per notification and subscribed consumer)',
      registers,
    });
    this.batchSize = new Histogram({
      name: 'pgq_bridge_bridge_batch_size',
      help: 'Rows bridged per transaction',
      buckets: BATCH_BUCKETS,
      registers,
    });
    this.latency = new Histogram({
      name: 'pgq_bridge_bridge_latency_seconds',
      help: 'Time from a notification being stored (created_at) to its jobs being committed',
      buckets: LATENCY_BUCKETS,
      registers,
    });
    this.completed = new Counter({
      name: 'pgq_bridge_jobs_completed_total',
      help: 'Handler runs that succeeded, per consumer',
      labelNames: ['consumer'],
      registers,
    });
    this.failed = new Counter({
      name: 'pgq_bridge_jobs_failed_total',
      help: 'Handler runs that failed for good (the job is a dead letter), per consumer',
      labelNames: ['consumer'],
      registers,
    });
    this.retried = new Counter({
      name: 'pgq_bridge_jobs_retried_total',
      help: 'Handler runs that failed and will be retried, per consumer',
      labelNames: ['consumer'],
      registers,
    });
    this.duration = new Histogram({
      name: 'pgq_bridge_handler_duration_seconds',
      help: 'Duration of handler runs, per consumer',
      labelNames: ['consumer'],
      buckets: DURATION_BUCKETS,
      registers,
    });
    if (options.database) this.addDatabaseGauges(options.database);
    if (options.queueCounts) this.watchQueues(options.queueCounts);
    if (options.processMetrics !== false) {
      collectDefaultMetrics({ register: this.registry, prefix: 'pgq_bridge_' });
    }
  }

  /** Counts one bridged batch (the listener's `batch` event). */
  observeBatch(event: BatchEvent): void {
    this.bridged.inc(event.rows);
    this.enqueued.inc(event.jobs);
    this.batchSize.observe(event.rows);
    if (event.createdAt) {
      const now = event.committedAt ?? Date.now();
      for (const created of event.createdAt)
        this.latency.observe(Math.max(0, now - created) / 1000);
    }
  }

  /** Counts one handler run of `consumer` that took `seconds`. */
  observeJob(consumer: string, outcome: JobOutcome, seconds: number): void {
    let s = this.series.get(consumer);
    if (!s) {
      s = {
        completed: this.completed.labels(consumer),
        failed: this.failed.labels(consumer),
        retried: this.retried.labels(consumer),
        duration: this.duration.labels(consumer),
      };
      this.series.set(consumer, s);
    }
    s[outcome].inc();
    s.duration.observe(seconds);
  }

  /** Subscribes to a listener's `batch` events. */
  watchListener(listener: EventEmitter): void {
    listener.on('batch', (event: BatchEvent) => this.observeBatch(event));
  }

  /** The metrics in Prometheus text format. */
  text(): Promise<string> {
    return this.registry.metrics();
  }

  /** Content type of {@link text}. */
  get contentType(): string {
    return this.registry.contentType;
  }

  /** Closes the connection of the database gauges. */
  async close(): Promise<void> {
    const pool = this.pool;
    this.pool = undefined;
    await pool?.end().catch(() => undefined);
  }

  private addDatabaseGauges(database: { databaseUrl: string; schema: string }): void {
    const queries = new OperationsQueries(database.schema);
    // One read per scrape serves the three gauges: they share the read while it is in flight.
    let sample:
      Promise<{ count: number; age: number | null; usage: number } | undefined> | undefined;
    const read = () => {
      sample ??= this.readDatabase(queries, database.databaseUrl).finally(() => {
        sample = undefined;
      });
      return sample;
    };
    const registers = [this.registry];
    new Gauge({
      name: 'pgq_bridge_backlog_rows',
      help: 'Stored notifications not yet bridged to BullMQ',
      registers,
      aggregator: 'max',
      async collect() {
        const s = await read();
        if (s) this.set(s.count);
      },
    });
    new Gauge({
      name: 'pgq_bridge_backlog_oldest_age_seconds',
      help: 'Age of the oldest notification not yet bridged (0 when none)',
      registers,
      aggregator: 'max',
      async collect() {
        const s = await read();
        if (s) this.set(s.age ?? 0);
      },
    });
    new Gauge({
      name: 'pgq_bridge_notification_queue_usage_ratio',
      help: "Fraction of Postgres' NOTIFY queue in use (pg_notification_queue_usage); at 1 notify() fails",
      registers,
      aggregator: 'max',
      async collect() {
        const s = await read();
        if (s) this.set(s.usage);
      },
    });
  }

  private async readDatabase(
    queries: OperationsQueries,
    databaseUrl: string,
  ): Promise<{ count: number; age: number | null; usage: number } | undefined> {
    this.pool ??= this.newPool(databaseUrl);
    const pool = this.pool;
    try {
      const [backlog, usage] = await withTimeout(
        Promise.all([queries.backlog(pool), queries.notificationQueueUsage(pool)]),
        3000,
        'metrics query',
      );
      return { count: backlog.count, age: backlog.oldestAgeSeconds, usage };
    } catch (error) {
      // A scrape during a Postgres outage shows the last values rather than failing.
      this.log.debug(
        { err: redactSecrets(errorMessage(error)) },
        'metrics: database gauges unread',
      );
      return undefined;
    }
  }

  private newPool(databaseUrl: string): pg.Pool {
    const pool = new pg.Pool({
      connectionString: databaseUrl,
      max: 1,
      connectionTimeoutMillis: 3000,
      application_name: 'pgq-bridge metrics',
      ...sessionSettings('operate'),
    });
    pool.on('error', () => undefined);
    return pool;
  }

  /**
   * Adds the `pgq_bridge_queue_jobs{consumer,state}` gauge, read from `queueCounts` at scrape
   * time (the board passes its queues). Once per instance.
   */
  watchQueues(queueCounts: () => Promise<Array<{ consumer: string; counts: JobCounts }>>): void {
    if (this.registry.getSingleMetric('pgq_bridge_queue_jobs')) return;
    const log = this.log;
    new Gauge({
      name: 'pgq_bridge_queue_jobs',
      help: 'Jobs in each consumer queue, by BullMQ state',
      labelNames: ['consumer', 'state'],
      registers: [this.registry],
      aggregator: 'max',
      async collect() {
        try {
          const all = await withTimeout(queueCounts(), 3000, 'queue counts');
          this.reset();
          for (const { consumer, counts } of all) {
            for (const [state, n] of Object.entries(counts)) this.set({ consumer, state }, n);
          }
        } catch (error) {
          log.debug({ err: redactSecrets(errorMessage(error)) }, 'metrics: queue gauges unread');
        }
      },
    });
  }
}
