import type pg from 'pg';
import type { BatchContext } from '../bridge/batch.js';
import type { QueueSet } from '../bridge/queues.js';
import { OwedStore } from '../db/owed-sql.js';
import { RecoveryStore } from '../db/recovery.js';
import { Store } from '../db/store.js';
import type { Logger } from '../log.js';
import type { RedisConnection } from '../redis.js';

/**
 * Counters every phase of a reconcile adds to. "Deliveries" are (consumer, notification) pairs.
 * With `dryRun`, `enqueued`, `bridged` and `replayed` count what would have been done.
 */
export interface ReconcileCounts {
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
}

export function emptyCounts(): ReconcileCounts {
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

/** What the phases of a reconcile (and playback) share: connections, stores, settings. */
export interface ReconcileDeps {
  pool: pg.Pool;
  /** For reads and repairs (presence checks, replays); adds go through `queues`. */
  redis: RedisConnection;
  queues: QueueSet;
  store: Store;
  recovery: RecoveryStore;
  owed: OwedStore;
  /** The bridging routine's context (src/bridge/batch.ts), on `pool` and `queues`. */
  batch: BatchContext;
  log: Logger;
  batchSize: number;
  dryRun: boolean;
  /** Payloads over this many bytes go into jobs by reference (see `jobDataFor`). */
  inlinePayloadLimit: number;
  signal?: AbortSignal;
}

/** Builds the deps of a run on the caller's connections. */
export function makeDeps(base: {
  pool: pg.Pool;
  redis: RedisConnection;
  queues: QueueSet;
  schema: string;
  log: Logger;
  batchSize: number;
  dryRun: boolean;
  /** Payloads over this many bytes go into jobs by reference (see `jobDataFor`). */
  inlinePayloadLimit: number;
  signal?: AbortSignal;
}): ReconcileDeps {
  const store = new Store(base.schema);
  return {
    ...base,
    store,
    recovery: new RecoveryStore(base.schema),
    owed: new OwedStore(base.schema),
    batch: {
      pool: base.pool,
      store,
      queues: base.queues,
      enqueueTimeoutMs: REDIS_STEP_TIMEOUT_MS,
      inlinePayloadLimit: base.inlinePayloadLimit,
    },
  };
}

/** Which rows and consumers a run covers (null: all). */
export interface ReconcileScope {
  channels: string[] | null;
  consumers: string[] | null;
  since: Date | null;
}

export function aborted(d: ReconcileDeps): boolean {
  return d.signal?.aborted === true;
}

/**
 * How long one Redis round trip of reconcile may take before it fails (instead of hanging), and
 * how long Redis may take to accept one batch of its jobs.
 */
export const REDIS_STEP_TIMEOUT_MS = 30_000;

/**
 * Jobs per `addBulk` call of reconcile: each call is one MULTI that Redis runs without serving
 * anyone else, so small calls keep the workers' commands (and a live listener's batches) flowing
 * while reconcile adds a million jobs; the cost is a few sub-millisecond round trips per batch.
 */
export const ADD_CHUNK = 100;
