import type { Worker } from 'bullmq';
import type { Settings } from '../config.js';
import type { ConsumerDefinition } from './consumers.js';
import type { Metrics } from '../operate/metrics.js';
import type { Logger } from '../log.js';
import type { RedisSettings } from '../redis.js';

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
   * more runs on several Workers in this process (see `fetchersFor`); this is the first.
   */
  readonly workers: ReadonlyMap<string, Worker>;
}
