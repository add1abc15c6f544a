import { hostname } from 'node:os';
import { Queue, type Worker } from 'bullmq';
import pg from 'pg';
import {
  CONSUMER_DEFAULTS,
  channelNames,
  isPacked,
  type BatchConsumerDefinition,
  type ConsumerDefinition,
  type SingleConsumerDefinition,
} from './consumers.js';
import { validateConsumers } from './consumer-validation.js';
import type { PgqWorker, WorkerOptions } from './worker-options.js';
import { BatchRunner } from './batch-worker.js';
import type { BatchRunnerDeps } from './batch-deps.js';
import { startPackedWorker } from './packed-worker.js';
import { jobIdFor } from '../bridge/plan.js';
import { createPool } from '../db/pool.js';
import { Store } from '../db/store.js';
import { LedgerWriter } from './ledger.js';
import { CompletedLookup } from './ledger-lookup.js';
import { Slots, fetchSlotsFor } from './slots.js';
import { TransactionRunner, transactionPool } from './transaction.js';
import { stopWorkers } from './shutdown.js';
import { redactSecrets, silentLogger, type Logger } from '../log.js';
import { Attempts } from './attempt.js';
import { createJobProcessor } from './processor.js';
import { traceJobs } from './tracing.js';
import { createKeyGate } from './ordering.js';
import { lazyQueue } from './promotion.js';
import { OrderingSql } from '../db/ordering.js';
import { startFetcher, startFetchers, type FetcherConnection } from './fetchers.js';
import { registerConsumers, touchDefinitions } from './registration.js';
import { foreignChannelGuard } from './foreign-channel.js';
import { runStartupChecks } from '../operate/checks.js';
import { closeRedis, createRedis, type RedisConnection } from '../redis.js';
import { errorMessage } from '../util.js';
import { consumerQueueOptions, warnAboutSingleSlotKeys } from '../queue-layout.js';
import { playback } from '../recover/playback.js';

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
  private readonly lookup: CompletedLookup;
  /** The pool and runner of transactional consumers' attempts (when this process has any). */
  private readonly txPool: pg.Pool | undefined;
  private readonly transactions: TransactionRunner | undefined;
  /** Handler attempts of every consumer of this process (their signals abort at shutdown). */
  private readonly attempts = new Attempts();
  private readonly abort = new AbortController();
  private readonly workerName: string;
  private heartbeat: NodeJS.Timeout | undefined;
  private closing: Promise<void> | undefined;
  private playingBack: Promise<void> | undefined;
  /** Queues opened by batch consumers (split batches) and ordered ones (promotions). */
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
        max: 4,
        connectionTimeoutMillis: 10_000,
        application_name: 'pgq-bridge work',
      },
      this.log,
      'worker',
    );
    this.redis = createRedis(options.settings, this.log, 'work');
    this.ledger = new LedgerWriter(this.store, this.pool, this.log);
    this.recordOutcomes = options.ledger ?? true;
    this.lookup = new CompletedLookup(this.store, this.pool, this.log);
    const transactional = options.consumers.filter((def) => def.transactional === true);
    if (transactional.length > 0) {
      const slots = transactional.reduce((sum, def) => sum + this.concurrencyOf(def), 0);
      this.txPool = transactionPool(options.settings.databaseUrl, slots, this.log);
      this.transactions = new TransactionRunner(options.settings.schema, this.txPool, this.log);
    }
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
    const results = await registerConsumers(this.options.consumers, {
      store: this.store,
      pool: this.pool,
      log: this.log,
      workerName: this.workerName,
      signal: this.abort.signal,
    });
    if (this.abort.signal.aborted) return;
    // A consumer retired (`consumers remove`) after this definition was registered stays retired.
    const retired = new Set(results.filter((r) => r.retired).map((r) => r.consumerId));
    for (const def of this.options.consumers) {
      if (retired.has(def.id)) continue;
      const workers = isPacked(def)
        ? [startPackedWorker(def, this.runnerDeps(def), this.where(def.id))]
        : def.batch
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
    // After an upgrade on a Redis Cluster, jobs in the old single-slot queues are read by nobody.
    await warnAboutSingleSlotKeys(
      this.redis,
      this.options.settings,
      this.options.consumers.map((def) => def.id),
      this.log,
    );
    // Subscriptions of a 'beginning' consumer are owed rows bridged before they existed. Every
    // start plays what is pending for its consumers (new, or left by a process that died
    // mid-playback); processes starting at once share the walk (src/recover/playback.ts).
    this.playingBack = this.playBack(this.options.consumers.map((def) => def.id));
    this.heartbeat = setInterval(() => {
      const running = this.options.consumers.filter((def) => this.workers.has(def.id));
      touchDefinitions(this.pool, this.store.schema, running, this.workerName).catch(
        () => undefined,
      );
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

  /** The connection and key prefix of a consumer's queue (its own hash tag on a cluster). */
  private where(consumerId: string): FetcherConnection {
    return consumerQueueOptions(this.redis, this.options.settings, consumerId);
  }

  private concurrencyOf(def: ConsumerDefinition): number {
    return this.options.concurrency ?? def.concurrency ?? CONSUMER_DEFAULTS.concurrency;
  }

  /** Leaves jobs of channels this definition does not list to workers that list them. */
  private foreignGuard(def: ConsumerDefinition): ReturnType<typeof foreignChannelGuard> {
    return foreignChannelGuard({
      consumerId: def.id,
      channels: channelNames(def),
      db: this.pool,
      schema: this.store.schema,
      log: this.log,
    });
  }

  /** A batch consumer's Worker: jobs of several notifications, one handleBatch call each. */
  private startBatchWorker(def: BatchConsumerDefinition): Worker {
    const runner = new BatchRunner(def, this.runnerDeps(def));
    return startFetcher(def, runner.process, runner.workerConcurrency, this.where(def.id));
  }

  /** What the runner of a batch or packed consumer needs. */
  private runnerDeps(def: ConsumerDefinition): BatchRunnerDeps & { signal: AbortSignal } {
    const where = this.where(def.id);
    const queue = lazyQueue(def.id, where, this.batchQueues);
    return {
      signal: this.abort.signal,
      store: this.store,
      db: this.pool,
      log: this.log,
      concurrency: this.concurrencyOf(def),
      ledger: this.recordOutcomes ? this.ledger : undefined,
      lookup: this.recordOutcomes ? this.lookup : undefined,
      attempts: this.attempts,
      transactions: this.transactions,
      metrics: this.options.metrics,
      queue,
      jobIdFor,
      leaveForeign: this.foreignGuard(def),
      gate: createKeyGate(def, {
        sql: new OrderingSql(this.options.settings.schema),
        db: this.pool,
        log: this.log,
        ledger: this.recordOutcomes,
        queue,
        packs: true,
      }),
    };
  }

  /** A one-job-per-notification consumer's Workers: its concurrency split over fetchersFor(). */
  private startWorkers(def: SingleConsumerDefinition): Worker[] {
    const concurrency = this.concurrencyOf(def);
    const processor = createJobProcessor(def, {
      store: this.store,
      db: this.pool,
      log: this.log,
      metrics: this.options.metrics,
      ledger: this.recordOutcomes ? this.ledger : undefined,
      lookup: this.recordOutcomes ? this.lookup : undefined,
      attempts: this.attempts,
      leaveForeign: this.foreignGuard(def),
      transactions: this.transactions,
      gate: createKeyGate(def, {
        sql: new OrderingSql(this.options.settings.schema),
        db: this.pool,
        log: this.log,
        ledger: this.recordOutcomes,
        queue: lazyQueue(def.id, this.where(def.id), this.batchQueues),
      }),
      slots: new Slots(concurrency),
    });
    // Each attempt in a CONSUMER span when @opentelemetry/api is installed (consume/tracing.ts).
    const traced = traceJobs(def.id, processor);
    return startFetchers(def, traced, fetchSlotsFor(concurrency), this.where(def.id));
  }

  close(): Promise<void> {
    this.closing ??= this.doClose();
    return this.closing;
  }

  private async doClose(): Promise<void> {
    this.abort.abort();
    clearInterval(this.heartbeat);
    await this.playingBack;
    await stopWorkers(
      this.running.map((r) => r.worker),
      this.attempts,
      this.options.shutdownTimeoutMs ?? 30_000,
      this.log,
    );
    this.lookup.close();
    await Promise.all(this.batchQueues.map((q) => q.close().catch(() => undefined)));
    await this.ledger.flush();
    this.ledger.close();
    await closeRedis(this.redis);
    await this.txPool?.end();
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
