import type { EventEmitter } from 'node:events';
import type { Settings } from '../config.js';
import type { Logger } from '../log.js';
import type { Metrics } from '../operate/metrics.js';
import type { RedisSettings } from '../redis.js';

/** Options of `createListener`. */
export interface ListenerOptions {
  settings: Pick<
    Settings,
    'databaseUrl' | 'listenDatabaseUrl' | 'redisUrl' | 'schema' | 'prefix' | 'inlinePayloadLimit'
  > &
    RedisSettings;
  /** Bridge only these channels (default: all). */
  channels?: string[];
  /** Rows claimed per transaction (default 500). */
  batchSize?: number;
  /** Leave rows stored before the start for reconcile or another listener. */
  skipPlayback?: boolean;
  /** First delay before retrying after a failure, in ms (default 1000; backs off to 30 s). */
  reconnectDelayMs?: number;
  /** Safety poll: the longest a missed wake-up can delay a row, in ms (default 5000). */
  pollIntervalMs?: number;
  /**
   * Wake-up lease length in ms (default 1000; 0 turns it off). While this listener keeps finding
   * rows it holds the lease, so `notify()` skips the costly NOTIFY, and it polls every few ms.
   * Only a listener of every channel holds it: writers on other channels must still wake someone.
   */
  wakeupLeaseMs?: number;
  /** How long Redis may take to accept a batch before the transaction rolls back (default 15 s). */
  enqueueTimeoutMs?: number;
  logger?: Logger;
  /** Counts batches, rows and bridge latency (see `Metrics`). */
  metrics?: Metrics;
  /** Refuse to start when Redis may evict jobs (maxmemory-policy other than noeviction). */
  strict?: boolean;
  /**
   * How long the start-up self-test waits for a NOTIFY on the LISTEN connection (default 5 s;
   * 0 skips it). No NOTIFY means a transaction-mode pooler: the listener refuses to run.
   */
  listenSelfTestTimeoutMs?: number;
}

/** A running listener (the `listen` command). */
export interface Listener extends EventEmitter {
  /**
   * Runs the start-up checks (schema version, Redis eviction policy; a server that cannot be
   * reached is skipped), then starts bridging; connection failures are retried in the background.
   * A LISTEN connection found to go through a transaction-mode pooler stops the listener and
   * emits `error` (code `PGQ_LISTEN_POOLED`).
   */
  start(): Promise<void>;
  /** Finishes the batch in flight, then closes every connection. */
  stop(): Promise<void>;
  /** Bridges everything claimable now; resolves with the number of rows bridged. */
  drain(): Promise<number>;
  /** Counters since start. */
  readonly stats: { bridged: number; jobs: number; batches: number; errors: number };
}
