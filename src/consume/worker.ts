import { hostname } from 'node:os';
import { Queue, UnrecoverableError, Worker, type Job } from 'bullmq';
import pg from 'pg';
import pRetry from 'p-retry';
import type { Settings } from '../config.js';
import {
  CONSUMER_DEFAULTS,
  channelNames,
  validateConsumers,
  type BatchConsumerDefinition,
  type ConsumerDefinition,
  type SingleConsumerDefinition,
  workerTuning,
} from './consumers.js';
import { BatchRunner } from './batch-worker.js';
import { jobIdFor } from '../bridge/plan.js';
import { createPool } from '../db/pool.js';
import { Store, type ConsumerRegistration } from '../db/store.js';
import { LedgerWriter, removedAtOnce } from './ledger.js';
import type { Metrics } from '../operate/metrics.js';
import { redactSecrets, silentLogger, type Logger } from '../log.js';
import { toNotification, type NotificationJobData } from './notification.js';
import { runStartupChecks } from '../operate/checks.js';
import {
  closeRedis,
  createRedis,
  queuePrefix,
  type RedisConnection,
  type RedisSettings,
} from '../redis.js';
import { errorMessage, withTimeout } from '../util.js';
import { playback } from '../recover/reconcile.js';

/** Options of {@link createWorker}. */
export interface WorkerOptions {
  settings: Pick<Settings, 'databaseUrl' | 'redisUrl' | 'schema' | 'prefix'> & RedisSettings;
  consumers: ConsumerDefinition[];
  /** Overrides every consumer's `concurrency`. */
  concurrency?: number;
  /** How long `close()` waits for in-flight jobs before abandoning them (default 30 s). */
  shutdownTimeoutMs?: number;
  logger?: Logger;
  /** Name recorded as the consumers' last seen worker (default host:pid). */
  workerName?: string;
  /** Counts handler runs and their duration (see `Metrics`). */
  metrics?: Metrics;
  /** Refuse to start when Redis may evict jobs (maxmemory-policy other than noeviction). */
  strict?: boolean;
  /**
   * Record outcomes in the delivery ledger (default true). Only benchmarks turn it off, to
   * measure what the ledger costs: without it, replays cannot tell what already ran.
   * @internal
   */
  ledger?: boolean;
}

/** A running set of consumer workers (the `work` command). */
export interface PgqWorker {
  /** Registers the consumers in Postgres (retrying until it can), then starts their workers. */
  start(): Promise<void>;
  /** Graceful stop: in-flight jobs finish (up to the shutdown timeout), outcomes are written. */
  close(): Promise<void>;
  /**
   * The BullMQ workers, by consumer id (after start). A consumer with a `concurrency` of 20 or
   * more runs on several Workers in this process (see {@link fetchersFor}); this is the first.
   */
  readonly workers: ReadonlyMap<string, Worker>;
}

/** BullMQ job options derived from a consumer definition; the listener applies them to its jobs. */
export function jobOptionsOf(def: ConsumerDefinition): Record<string, unknown> {
  return {
    attempts: def.attempts ?? CONSUMER_DEFAULTS.attempts,
    backoff: def.backoff ?? CONSUMER_DEFAULTS.backoff,
    removeOnComplete: def.removeOnComplete ?? CONSUMER_DEFAULTS.removeOnComplete,
    removeOnFail: def.removeOnFail ?? CONSUMER_DEFAULTS.removeOnFail,
  };
}

/**
 * How many BullMQ Workers share one consumer's `concurrency` in a process: one per 10 slots, at
 * most 4. Why: a BullMQ Worker fetches waiting jobs one round trip at a time and starts none until
 * it has fetched what is waiting (up to its concurrency), while the listener adds jobs in batches.
 * Several Workers fetch side by side over the same connection, so the first handlers of a batch
 * start sooner (stream bench at 2,000/s, five alternating runs each: p50 6.4 ms instead of 9.9,
 * medians; p99 spread as widely as before on the shared machine). Each Worker costs one more
 * blocking Redis connection.
 */
export function fetchersFor(concurrency: number): number {
  return Math.min(4, Math.max(1, Math.floor(concurrency / 10)));
}

/** `total` split into `parts` integers that differ by at most one (50 in 4 → 13, 13, 12, 12). */
export function splitEvenly(total: number, parts: number): number[] {
  return Array.from(
    { length: parts },
    (_, i) => Math.floor(total / parts) + (i < total % parts ? 1 : 0),
  );
}

function isPermanent(error: unknown): boolean {
  return (
    error instanceof UnrecoverableError ||
    (error instanceof Error && error.name === 'UnrecoverableError')
  );
}

class ConsumerWorkers implements PgqWorker {
  readonly workers = new Map<string, Worker>();
  /** Every BullMQ Worker started, with its consumer id (several per consumer: fetchersFor). */
  private readonly running: { consumerId: string; worker: Worker }[] = [];
  private readonly store: Store;
  private readonly log: Logger;
  private readonly pool: pg.Pool;
  private readonly redis: RedisConnection;
  private readonly ledger: LedgerWriter;
  private readonly recordOutcomes: boolean;
  private readonly abort = new AbortController();
  private readonly workerName: string;
  private heartbeat: NodeJS.Timeout | undefined;
  private closing: Promise<void> | undefined;
  private playingBack: Promise<void> | undefined;
  /** Queues batch consumers opened to add the jobs of split batches. */
  private readonly batchQueues: Queue[] = [];

  constructor(private readonly options: WorkerOptions) {
    this.log = options.logger ?? silentLogger();
    validateConsumers(options.consumers.map((value) => ({ value, where: 'createWorker' })));
    if (
      options.concurrency !== undefined &&
      !(Number.isInteger(options.concurrency) && options.concurrency > 0)
    ) {
      throw new RangeError(`concurrency must be a positive integer, got ${options.concurrency}`);
    }
    this.store = new Store(options.settings.schema);
    this.workerName = options.workerName ?? `${hostname()}:${process.pid}`;
    this.pool = createPool(
      {
        connectionString: options.settings.databaseUrl,
        max: 3,
        connectionTimeoutMillis: 10_000,
        application_name: 'pgq-bridge work',
      },
      this.log,
    );
    this.redis = createRedis(options.settings, this.log, 'work');
    this.ledger = new LedgerWriter(this.store, this.pool, this.log);
    this.recordOutcomes = options.ledger ?? true;
  }

  async start(): Promise<void> {
    // Schema version and Redis eviction policy; unreachable servers are retried below.
    await runStartupChecks({
      schema: this.options.settings.schema,
      db: this.pool,
      redis: this.redis,
      log: this.log,
      strict: this.options.strict,
    });
    const registrations: ConsumerRegistration[] = this.options.consumers.map((def) => ({
      id: def.id,
      channels: channelNames(def),
      jobOptions: jobOptionsOf(def),
      batch: def.batch ?? null,
      startFrom: def.startFrom ?? CONSUMER_DEFAULTS.startFrom,
      worker: this.workerName,
    }));
    const created = await pRetry(
      async () => {
        const client = await this.pool.connect();
        // Checked-out clients have no pool 'error' listener; a dying connection must not crash us.
        let broken: Error | undefined;
        const onError = (error: Error): void => {
          broken = error;
        };
        client.on('error', onError);
        try {
          return await this.store.registerConsumers(client, registrations);
        } finally {
          client.removeListener('error', onError);
          client.release(broken);
        }
      },
      {
        retries: Infinity,
        minTimeout: 1000,
        maxTimeout: 30_000,
        signal: this.abort.signal,
        onFailedAttempt: ({ error, attemptNumber }) =>
          this.log.warn(
            { err: redactSecrets(errorMessage(error)), attempt: attemptNumber },
            'registering consumers failed; retrying',
          ),
      },
    ).catch((error: unknown) => {
      // Stopped (SIGINT/SIGTERM) while still retrying: a graceful stop, not a failure.
      if (this.abort.signal.aborted) return [];
      throw error;
    });
    if (this.abort.signal.aborted) return;
    for (const def of this.options.consumers) {
      const workers = def.batch
        ? [this.startBatchWorker(def)]
        : this.startWorkers(def as SingleConsumerDefinition);
      for (const worker of workers) {
        worker.on('error', (error) =>
          this.log.warn(
            { consumer: def.id, err: redactSecrets(errorMessage(error)) },
            'worker error',
          ),
        );
        this.running.push({ consumerId: def.id, worker });
      }
      this.workers.set(def.id, workers[0]);
      this.log.info(
        { consumer: def.id, channels: channelNames(def) },
        'consumer registered; worker started',
      );
    }
    // New subscriptions of a 'beginning' consumer are owed rows bridged before they existed.
    // Only the process whose registration created them plays them back; if it stops before the
    // end, the next `reconcile` finishes the playback.
    const newSubscribers = [...new Set(created.map((s) => s.consumerId))];
    if (newSubscribers.length > 0) this.playingBack = this.playBack(newSubscribers);
    this.heartbeat = setInterval(() => {
      this.store
        .touchConsumers(this.pool, [...this.workers.keys()], this.workerName)
        .catch(() => undefined);
    }, 30_000);
    this.heartbeat.unref();
  }

  private async playBack(consumers: string[]): Promise<void> {
    try {
      const result = await playback({
        pool: this.pool,
        redis: this.redis,
        settings: this.options.settings,
        consumers,
        logger: this.log,
        signal: this.abort.signal,
      });
      if (result.scanned > 0) {
        this.log.info({ consumers, ...result }, 'played stored notifications to new consumers');
      }
    } catch (error) {
      this.log.warn(
        { consumers, err: redactSecrets(errorMessage(error)) },
        'playback for new consumers failed; `pgq-bridge reconcile` finishes it',
      );
    }
  }

  /** A batch consumer's Worker: jobs of several notifications, one handleBatch call each. */
  private startBatchWorker(def: BatchConsumerDefinition): Worker {
    const prefix = queuePrefix(this.options.settings);
    let queue: Queue | undefined;
    const runner = new BatchRunner(def, {
      store: this.store,
      db: this.pool,
      log: this.log,
      concurrency: this.options.concurrency ?? def.concurrency ?? CONSUMER_DEFAULTS.concurrency,
      record: this.recordOutcomes
        ? (outcome, now) => (now ? this.ledger.recordNow(outcome) : this.ledger.record(outcome))
        : undefined,
      metrics: this.options.metrics,
      queue: () => {
        if (!queue) {
          queue = new Queue(def.id, { connection: this.redis, prefix });
          this.batchQueues.push(queue);
        }
        return queue;
      },
      jobIdFor,
    });
    return new Worker(def.id, runner.process, {
      connection: this.redis,
      prefix,
      concurrency: runner.workerConcurrency,
      ...workerTuning(def),
    });
  }

  /** A one-job-per-notification consumer's Workers: its concurrency split over fetchersFor(). */
  private startWorkers(def: SingleConsumerDefinition): Worker[] {
    const concurrency =
      this.options.concurrency ?? def.concurrency ?? CONSUMER_DEFAULTS.concurrency;
    const processJob = this.processorOf(def);
    return splitEvenly(concurrency, fetchersFor(concurrency)).map(
      (share) =>
        new Worker(def.id, processJob, {
          connection: this.redis,
          prefix: queuePrefix(this.options.settings),
          concurrency: share,
          ...workerTuning(def),
        }),
    );
  }

  /** Runs one job: the handler, with the ledger, metrics and logs around it. */
  private processorOf(def: SingleConsumerDefinition): (job: Job) => Promise<unknown> {
    const timeoutMs = def.timeout;
    return async (job: Job) => {
      const data = job.data as NotificationJobData;
      if (typeof data?.id !== 'string') {
        // The job's hash was evicted or wiped while its id stayed queued: nothing to run and
        // no notification id to record. reconcile --verify removes the remains and re-enqueues.
        throw new UnrecoverableError(
          'job data is missing from Redis (evicted or wiped?): run pgq-bridge reconcile --verify',
        );
      }
      const attempt = job.attemptsMade + 1;
      const isReplay = data.replay === true;
      // Started more often than it failed: a worker died mid-run and BullMQ's stalled-job
      // recovery restarted it. Its handler may have finished already: the ledger knows.
      const restarted = job.attemptsStarted > attempt;
      if (isReplay || restarted) {
        const done = await this.store.completedAmong(this.pool, def.id, [data.id]);
        if (done.has(data.id)) {
          this.log.debug(
            { notificationId: data.id, channel: data.channel, consumer: def.id, attempt },
            'replay skipped: already completed per the ledger',
          );
          return { skipped: 'already completed per the ledger' };
        }
      }
      const notification = toNotification(data, attempt, isReplay);
      const started = performance.now();
      const metrics = this.options.metrics;
      try {
        const run = Promise.resolve(def.handle(notification, job));
        const result = timeoutMs
          ? await withTimeout(run, timeoutMs, `handler of ${def.id} timed out`)
          : await run;
        if (this.recordOutcomes) {
          const outcome = {
            consumerId: def.id,
            notificationId: data.id,
            status: 'completed' as const,
            attempts: attempt,
            lastError: null,
          };
          if (removedAtOnce(job.opts.removeOnComplete)) await this.ledger.recordNow(outcome);
          else this.ledger.record(outcome);
        }
        const seconds = (performance.now() - started) / 1000;
        metrics?.observeJob(def.id, 'completed', seconds);
        // Guarded: building the fields costs something on the hot path even when not logged.
        if (this.log.isLevelEnabled('debug')) {
          this.log.debug(
            {
              notificationId: data.id,
              channel: data.channel,
              consumer: def.id,
              attempt,
              ms: Math.round(seconds * 1000),
            },
            'handled',
          );
        }
        return result ?? null;
      } catch (error) {
        const attempts = job.opts.attempts ?? 1;
        const final = isPermanent(error) || attempt >= attempts;
        metrics?.observeJob(
          def.id,
          final ? 'failed' : 'retried',
          (performance.now() - started) / 1000,
        );
        const log = final ? this.log.error.bind(this.log) : this.log.warn.bind(this.log);
        log(
          {
            notificationId: data.id,
            channel: data.channel,
            consumer: def.id,
            attempt,
            err: errorMessage(error),
          },
          final ? 'handler failed for good (job kept as failed)' : 'handler failed; will retry',
        );
        if (final && this.recordOutcomes) {
          const outcome = {
            consumerId: def.id,
            notificationId: data.id,
            status: 'failed' as const,
            attempts: attempt,
            lastError: errorMessage(error).slice(0, 2000),
          };
          if (removedAtOnce(job.opts.removeOnFail)) await this.ledger.recordNow(outcome);
          else this.ledger.record(outcome);
        }
        throw error;
      }
    };
  }

  close(): Promise<void> {
    this.closing ??= this.doClose();
    return this.closing;
  }

  private async doClose(): Promise<void> {
    this.abort.abort();
    clearInterval(this.heartbeat);
    await this.playingBack;
    const timeoutMs = this.options.shutdownTimeoutMs ?? 30_000;
    await Promise.all(
      this.running.map(async ({ consumerId: id, worker }) => {
        try {
          await withTimeout(worker.close(), timeoutMs, 'in-flight jobs did not finish');
        } catch {
          this.log.warn(
            { consumer: id, timeoutMs },
            'shutdown timeout: abandoning in-flight jobs (BullMQ retries them as stalled)',
          );
          await worker.close(true).catch(() => undefined);
        }
      }),
    );
    await Promise.all(this.batchQueues.map((q) => q.close().catch(() => undefined)));
    await this.ledger.flush();
    this.ledger.close();
    await closeRedis(this.redis);
    await this.pool.end();
  }
}

/**
 * Creates the workers of the given consumers (the `work` command): one BullMQ Worker per
 * consumer, whose queue is named after the consumer id. Run as many as you like, on as many
 * machines: BullMQ hands each job to exactly one of them at a time.
 */
export function createWorker(options: WorkerOptions): PgqWorker {
  return new ConsumerWorkers(options);
}
