import { EventEmitter } from 'node:events';
import pg from 'pg';
import pRetry from 'p-retry';
import { createPool } from '../db/pool.js';
import { Store } from '../db/store.js';
import { inlinePayloadLimitOf } from '../config.js';
import type { Listener, ListenerOptions } from './listener-options.js';
import { WakeupListener } from './wakeups.js';
import { WakeupLease } from './lease.js';
import { redactSecrets, silentLogger, type Logger } from '../log.js';
import type { BatchEvent } from '../operate/metrics.js';
import { QueueSet } from './queues.js';
import { Claimer } from './claimer.js';
import type { BatchResult } from './batch.js';
import { runStartupChecks } from '../operate/checks.js';
import { PgqError } from '../errors.js';
import { closeRedis, createRedis, type RedisConnection } from '../redis.js';
import { errorMessage } from '../util.js';
import { assertChannel } from '../identifiers.js';

export type { Listener, ListenerOptions } from './listener-options.js';

class BridgeListener extends EventEmitter implements Listener {
  readonly stats = { bridged: 0, jobs: 0, batches: 0, errors: 0 };
  private readonly store: Store;
  private readonly log: Logger;
  private readonly pool: pg.Pool;
  private readonly redis: RedisConnection;
  private readonly queues: QueueSet;
  private readonly wakeups: WakeupListener;
  private readonly abort = new AbortController();
  private readonly batchSize: number;
  private readonly channels: string[] | null;
  private wakePending = true;
  private wakeWaiter: (() => void) | undefined;
  private loop: Promise<void> | undefined;
  private secondLane: Promise<void> | undefined;
  private readonly claimer: Claimer;
  private stopping: Promise<void> | undefined;
  private readonly lease: WakeupLease | undefined;

  constructor(private readonly options: ListenerOptions) {
    super();
    const { settings } = options;
    this.log = options.logger ?? silentLogger();
    this.store = new Store(settings.schema);
    this.batchSize = options.batchSize ?? 500;
    if (!Number.isInteger(this.batchSize) || this.batchSize < 1) {
      throw new RangeError(`batch-size must be a positive integer, got ${options.batchSize}`);
    }
    for (const channel of options.channels ?? []) assertChannel(channel);
    this.channels = options.channels?.length ? options.channels : null;
    this.pool = createPool(
      {
        connectionString: settings.databaseUrl,
        // Two batch lanes (see startSecondLane) and the wake-up lease / self-test statements.
        max: 3,
        connectionTimeoutMillis: 10_000,
        application_name: 'pgq-bridge listen',
        // Backstop: if this process stalls mid-batch, Postgres ends the transaction and frees the rows.
        idle_in_transaction_session_timeout: 60_000,
      },
      this.log,
      'listener',
    );
    this.redis = createRedis(settings, this.log, 'listen');
    // The adds get a connection of their own, which a hung Redis makes the listener throw away.
    this.queues = new QueueSet(() => createRedis(settings, this.log, 'listen-enqueue'), settings);
    this.claimer = new Claimer(
      {
        pool: this.pool,
        store: this.store,
        queues: this.queues,
        enqueueTimeoutMs: options.enqueueTimeoutMs ?? 15_000,
        inlinePayloadLimit: inlinePayloadLimitOf(settings),
      },
      { batchSize: this.batchSize, channels: this.channels, log: this.log },
      (batch) => this.noteBridged(batch),
    );
    const leaseMs = options.wakeupLeaseMs ?? 1000;
    if (!this.channels && leaseMs > 0) {
      this.lease = new WakeupLease({ store: this.store, db: this.pool, logger: this.log, leaseMs });
    }
    this.wakeups = new WakeupListener({
      url: settings.listenDatabaseUrl,
      store: this.store,
      logger: this.log,
      reconnectDelayMs: options.reconnectDelayMs,
      ...(options.listenSelfTestTimeoutMs === 0
        ? {}
        : {
            selfTestNotify: async (channel: string) => {
              await this.pool.query('SELECT pg_notify($1, $2)', [channel, 'pgq-bridge self-test']);
            },
            selfTestTimeoutMs: options.listenSelfTestTimeoutMs,
          }),
    });
    options.metrics?.watchListener(this);
    this.wakeups.on('wake', () => this.wake());
    // After any (re)connect, sweep: wake-ups sent while disconnected are gone.
    this.wakeups.on('connected', () => this.wake());
  }

  async start(): Promise<void> {
    try {
      await runStartupChecks({
        schema: this.options.settings.schema,
        db: this.pool,
        redis: this.redis,
        log: this.log,
        strict: this.options.strict,
      });
    } catch (error) {
      await this.stop();
      throw error;
    }
    void this.wakeups.start().catch((error: unknown) => {
      if (error instanceof PgqError && error.code === 'PGQ_LISTEN_POOLED') {
        this.log.error({ err: error.message, check: 'listen-self-test' }, 'refusing to listen');
        void this.stop().finally(() => this.emit('error', error));
        return;
      }
      this.log.error({ err: errorMessage(error) }, 'LISTEN connection failed');
    });
    this.loop = this.run();
  }

  stop(): Promise<void> {
    this.stopping ??= this.doStop();
    return this.stopping;
  }

  private async doStop(): Promise<void> {
    this.abort.abort();
    this.wakeWaiter?.();
    await this.loop;
    await this.secondLane;
    await this.wakeups.stop();
    // Writers resume sending NOTIFY at once, so another listener wakes without waiting a lease out.
    await this.lease?.release();
    await this.queues.close();
    await closeRedis(this.redis);
    await this.pool.end();
  }

  async drain(): Promise<number> {
    let total = 0;
    for (;;) {
      const n = await this.claimer.bridgeOnce();
      total += n;
      if (n < this.batchSize) return total;
    }
  }

  private wake(): void {
    this.wakePending = true;
    this.wakeWaiter?.();
  }

  private waitForWake(ms: number): Promise<void> {
    if (this.wakePending || this.abort.signal.aborted) return Promise.resolve();
    return new Promise((resolve) => {
      const done = (): void => {
        clearTimeout(timer);
        this.wakeWaiter = undefined;
        resolve();
      };
      const timer = setTimeout(done, ms);
      this.wakeWaiter = done;
    });
  }

  /** Retries `fn` with backoff until it succeeds or the listener stops. */
  private retrying<T>(what: string, fn: () => Promise<T>): Promise<T> {
    return pRetry(fn, {
      retries: Infinity,
      minTimeout: this.options.reconnectDelayMs ?? 1000,
      maxTimeout: 30_000,
      factor: 2,
      signal: this.abort.signal,
      onFailedAttempt: ({ error, attemptNumber }) => {
        // A failure caused by stop() itself is not worth a warning.
        if (this.abort.signal.aborted) return;
        this.stats.errors++;
        this.log.warn(
          { err: redactSecrets(errorMessage(error)), attempt: attemptNumber },
          `${what} failed; retrying`,
        );
      },
    });
  }

  private async run(): Promise<void> {
    const pollMs = this.options.pollIntervalMs ?? 5000;
    try {
      if (this.options.skipPlayback) {
        const boundary = await this.retrying('reading the newest notification id', () =>
          this.store.boundary(this.pool),
        );
        this.claimer.startAfter(boundary);
        this.log.info(
          { afterId: boundary.maxId, snapshot: boundary.snapshot },
          'skipping playback of stored notifications',
        );
      }
      while (!this.abort.signal.aborted) {
        this.wakePending = false;
        let failed = false;
        const bridged = await this.retrying('bridging a batch', async () => {
          try {
            return await this.claimer.bridgeOnce();
          } catch (error) {
            failed = true;
            throw error;
          }
        });
        // After recovering from a failure, sweep again at once: anything may have piled up.
        if (failed) this.wakePending = true;
        if (bridged < this.batchSize) await this.claimer.settleBoundary();
        await this.noteBatch(bridged);
        if (bridged >= this.batchSize) {
          this.startSecondLane(this.batchSize);
          continue;
        }
        await this.waitForWake(this.lease ? this.lease.nextWaitMs(pollMs) : pollMs);
      }
    } catch (error) {
      if (!this.abort.signal.aborted) {
        this.log.error({ err: errorMessage(error) }, 'listener loop stopped');
        throw error;
      }
    }
  }

  /**
   * Tells the wake-up lease how many rows a batch found. A renewal of a live lease (one UPDATE,
   * twice a second) runs beside the next claims instead of delaying them: the listener keeps
   * polling meanwhile. Taking the lease afresh is awaited, or the listener could go to sleep on
   * NOTIFY just as writers stop sending them. afterBatch handles its own errors and never runs
   * two renewals at once.
   */
  private async noteBatch(bridged: number): Promise<void> {
    if (!this.lease) return;
    const wasHot = this.lease.isHot;
    const renewing = this.lease.afterBatch(bridged);
    if (!wasHot) await renewing;
  }

  /**
   * While there is a backlog (full batches), a second lane claims the next rows (SKIP LOCKED skips
   * the first lane's) while the first lane's jobs travel to Redis, so Postgres and Redis work at
   * the same time instead of taking turns. It stops at the first batch with fewer than `minRows`
   * rows, or at a failure, which it leaves to the main loop's retries. (Not for a live stream:
   * there a second lane only split the same rows into more, smaller batches, costing CPU that
   * the stream bench showed as latency on a 2-core machine.)
   */
  private startSecondLane(minRows: number): void {
    if (this.secondLane || this.abort.signal.aborted) return;
    this.secondLane = (async () => {
      try {
        while (!this.abort.signal.aborted) {
          const bridged = await this.claimer.bridgeOnce();
          // Its rows count towards the arrival rate that keeps the wake-up lease.
          await this.noteBatch(bridged);
          if (bridged < minRows) break;
        }
      } catch (error) {
        this.stats.errors++;
        this.log.debug({ err: redactSecrets(errorMessage(error)) }, 'second batch lane stopped');
      } finally {
        this.secondLane = undefined;
      }
    })();
  }

  /** Counts and announces a batch that committed rows. */
  private noteBridged({ rows, jobs }: BatchResult): void {
    this.stats.bridged += rows.length;
    this.stats.jobs += jobs;
    this.stats.batches++;
    const event: BatchEvent = {
      rows: rows.length,
      jobs,
      createdAt: rows.map((r) => r.created_at.getTime()),
      committedAt: Date.now(),
    };
    this.emit('batch', event);
  }
}

/**
 * Creates the bridge that turns stored notifications into BullMQ jobs (the `listen` command).
 * Several listeners may run at once: rows are claimed with `FOR UPDATE SKIP LOCKED`.
 */
export function createListener(options: ListenerOptions): Listener {
  return new BridgeListener(options);
}
