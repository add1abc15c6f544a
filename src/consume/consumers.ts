import { readdirSync, statSync } from 'node:fs';
import { join, resolve } from 'node:path';
import type { Job } from 'bullmq';
import { UsageError } from '../errors.js';
import { assertChannel, assertConsumerId } from '../identifiers.js';
import { importUserFile } from './load-module.js';
import type { Notification } from './notification.js';
import type { HandlerContext, TransactionalHandlerContext } from './attempt.js';

/** BullMQ's "keep jobs" setting: true/false, a count, or `{ age, count }`. */
export type KeepJobs = boolean | number | { age?: number; count?: number; limit?: number };

/** BullMQ backoff: a delay in ms, or `{ type: 'fixed' | 'exponential', delay }`. */
export type Backoff = number | { type: 'fixed' | 'exponential'; delay?: number; jitter?: number };

/** Settings shared by one-at-a-time and batch consumers. */
export interface ConsumerOptions {
  /** 1–64 characters of `[A-Za-z0-9_-]`; also the BullMQ queue name. */
  id: string;
  /** Channels this consumer subscribes to: names, or typed channels from `defineChannel`. */
  channels: readonly ChannelRef[];
  /** Jobs this consumer runs at once per worker process (BullMQ `concurrency`, default 1). */
  concurrency?: number;
  /** Attempts before a job is failed for good (BullMQ `attempts`, default 5). */
  attempts?: number;
  /** Delay between attempts (BullMQ `backoff`, default exponential from 1000 ms). */
  backoff?: Backoff;
  /** Milliseconds a handler may run before the attempt fails (retried like any error). */
  timeout?: number;
  /** BullMQ rate limiter: at most `max` jobs per `duration` ms. */
  limiter?: { max: number; duration: number };
  /** Which completed jobs BullMQ keeps (default: a day, at most 10,000). */
  removeOnComplete?: KeepJobs;
  /** Which failed jobs BullMQ keeps (default: all: failed jobs are dead letters). */
  removeOnFail?: KeepJobs;
  /** For a new consumer: play every stored notification (`beginning`) or only new ones (`now`). */
  startFrom?: 'beginning' | 'now';
  /**
   * BullMQ `lockDuration` (ms, default 30,000): how long a job stays locked to a worker without a
   * lock renewal. With `stalledInterval`, it bounds how soon a job of a crashed worker runs again.
   */
  lockDuration?: number;
  /** BullMQ `stalledInterval` (ms, default 30,000): how often workers look for stalled jobs. */
  stalledInterval?: number;
  /**
   * Ordered delivery (docs/ordering.md): notifications that share a key are handled one at a
   * time, in commit order; different keys run in parallel. `onDeadLetter` says what a
   * notification that failed for good does to the later ones of its key: `'block'` (default)
   * holds them until it is replayed or skipped, `'skip'` lets them go on. Not with `batch`.
   */
  ordered?: boolean | { onDeadLetter?: 'block' | 'skip' };
}

/** The BullMQ Worker options a consumer definition sets beyond concurrency. */
export function workerTuning(
  def: ConsumerOptions,
): Pick<ConsumerOptions, 'limiter' | 'lockDuration' | 'stalledInterval'> {
  return {
    ...(def.limiter ? { limiter: def.limiter } : {}),
    ...(def.lockDuration ? { lockDuration: def.lockDuration } : {}),
    ...(def.stalledInterval ? { stalledInterval: def.stalledInterval } : {}),
  };
}

/** A consumer that handles one notification per job, outside any transaction of ours. */
export interface PlainSingleConsumerDefinition<Payload = unknown> extends ConsumerOptions {
  batch?: undefined;
  transactional?: false;
  /**
   * Handles one notification. Throw to retry; throw `PermanentError` to fail at once. `ctx.signal`
   * aborts when the attempt times out or the process stops past its shutdown timeout.
   */
  handle(notification: Notification<Payload>, job: Job, ctx: HandlerContext): unknown;
}

/**
 * A consumer whose every attempt runs in a Postgres transaction (docs/transactional.md): its
 * writes through `ctx.db` commit exactly once per notification, with the ledger row.
 */
export interface TransactionalSingleConsumerDefinition<Payload = unknown> extends ConsumerOptions {
  batch?: undefined;
  transactional: true;
  /** Handles one notification inside the attempt's transaction (`ctx.db`). */
  handle(notification: Notification<Payload>, job: Job, ctx: TransactionalHandlerContext): unknown;
}

/** A consumer that handles one notification per job. */
export type SingleConsumerDefinition<Payload = unknown> =
  PlainSingleConsumerDefinition<Payload> | TransactionalSingleConsumerDefinition<Payload>;

/** A batch consumer (one BullMQ job per batch), outside any transaction of ours. */
export interface PlainBatchConsumerDefinition<Payload = unknown> extends ConsumerOptions {
  /** Up to `size` notifications per job, waiting at most `maxWaitMs` to fill a batch. */
  batch: { size: number; maxWaitMs: number };
  transactional?: false;
  /** Handles a batch of notifications (`ctx` as for `handle`). */
  handleBatch(notifications: Notification<Payload>[], job: Job, ctx: HandlerContext): unknown;
}

/** A batch consumer whose every handler call runs in one Postgres transaction (`ctx.db`). */
export interface TransactionalBatchConsumerDefinition<Payload = unknown> extends ConsumerOptions {
  /** Up to `size` notifications per job, waiting at most `maxWaitMs` to fill a batch. */
  batch: { size: number; maxWaitMs: number };
  transactional: true;
  /** Handles a batch of notifications inside one transaction (`ctx.db`). */
  handleBatch(
    notifications: Notification<Payload>[],
    job: Job,
    ctx: TransactionalHandlerContext,
  ): unknown;
}

/** A consumer that receives notifications in batches (one BullMQ job per batch). */
export type BatchConsumerDefinition<Payload = unknown> =
  PlainBatchConsumerDefinition<Payload> | TransactionalBatchConsumerDefinition<Payload>;

/** A consumer definition: a plain object; see SPEC.md. */
export type ConsumerDefinition<Payload = unknown> =
  SingleConsumerDefinition<Payload> | BatchConsumerDefinition<Payload>;

/** A channel in a consumer's `channels`: a name, or a typed channel from `defineChannel`. */
export type ChannelRef = string | { readonly name: string; readonly payloadType?: unknown };

/**
 * The payload type a handler receives from a list of channels: the union of the typed channels'
 * payloads, or `unknown` as soon as one channel is a plain name.
 */
export type PayloadOfChannels<Channels extends readonly ChannelRef[]> = PayloadOf<Channels[number]>;
type PayloadOf<C> = C extends string
  ? unknown
  : C extends { readonly payloadType?: infer P }
    ? P
    : unknown;

/**
 * Identity helper that types a consumer definition:
 * `export default defineConsumer({ id: 'welcome-email', channels: ['users'], handle(n) {...} })`.
 * With typed channels (`channels: [orders]`), `n.payload` has the channels' payload type; with
 * names only, pass it yourself: `defineConsumer<MyPayload>({...})`.
 */
export function defineConsumer<const Channels extends readonly ChannelRef[]>(
  definition: ConsumerDefinition<PayloadOfChannels<Channels>> & { channels: Channels },
): ConsumerDefinition<PayloadOfChannels<Channels>>;
export function defineConsumer<Payload = unknown>(
  definition: ConsumerDefinition<Payload>,
): ConsumerDefinition<Payload>;
export function defineConsumer(definition: ConsumerDefinition): ConsumerDefinition {
  return definition;
}

/** Default job settings (documented in the README). */
export const CONSUMER_DEFAULTS = {
  concurrency: 1,
  attempts: 5,
  backoff: { type: 'exponential', delay: 1000 } as Backoff,
  removeOnComplete: { age: 24 * 3600, count: 10_000 } as KeepJobs,
  removeOnFail: false as KeepJobs,
  startFrom: 'now' as const,
};

function positiveInteger(value: unknown): boolean {
  return typeof value === 'number' && Number.isInteger(value) && value > 0;
}

/** The channel names of a consumer (channel objects from `defineChannel` contribute their name). */
export function channelNames(def: ConsumerOptions): string[] {
  return def.channels.map((c) => (typeof c === 'string' ? c : c.name));
}

/** Checks a consumer definition; `where` names its source in error messages. */
export function validateConsumer(value: unknown, where: string): ConsumerDefinition {
  if (value === null || typeof value !== 'object') {
    throw new UsageError(
      `${where}: a consumer definition must be an object`,
      'PGQ_INVALID_CONSUMER',
    );
  }
  const def = value as Record<string, unknown>;
  const fail = (message: string): never => {
    throw new UsageError(
      `${where}: consumer ${JSON.stringify(def.id)}: ${message}`,
      'PGQ_INVALID_CONSUMER',
    );
  };
  try {
    assertConsumerId(def.id);
  } catch (error) {
    throw new UsageError(`${where}: ${(error as Error).message}`, 'PGQ_INVALID_CONSUMER');
  }
  if (!Array.isArray(def.channels) || def.channels.length === 0)
    fail('channels must be a non-empty array');
  for (const channel of def.channels as unknown[]) {
    const name =
      typeof channel === 'object' && channel !== null
        ? (channel as { name?: unknown }).name
        : channel;
    try {
      assertChannel(name);
    } catch (error) {
      fail((error as Error).message);
    }
  }
  if (def.batch !== undefined) {
    const batch = def.batch as Record<string, unknown> | null;
    if (
      !batch ||
      !positiveInteger(batch.size) ||
      typeof batch.maxWaitMs !== 'number' ||
      batch.maxWaitMs < 0
    ) {
      fail('batch must be { size: positive integer, maxWaitMs: number >= 0 }');
    }
    if (typeof def.handleBatch !== 'function')
      fail('a batch consumer needs handleBatch(notifications, job)');
  } else if (typeof def.handle !== 'function') {
    fail('handle(notification, job) must be a function');
  }
  for (const key of ['concurrency', 'attempts'] as const) {
    if (def[key] !== undefined && !positiveInteger(def[key]))
      fail(`${key} must be a positive integer`);
  }
  for (const key of ['lockDuration', 'stalledInterval'] as const) {
    if (def[key] !== undefined && !positiveInteger(def[key])) {
      fail(`${key} must be a positive integer (ms)`);
    }
  }
  if (def.transactional !== undefined && typeof def.transactional !== 'boolean') {
    fail('transactional must be true or false');
  }
  if (def.timeout !== undefined && !positiveInteger(def.timeout))
    fail('timeout must be a positive integer (ms)');
  if (def.startFrom !== undefined && def.startFrom !== 'beginning' && def.startFrom !== 'now') {
    fail(`startFrom must be 'beginning' or 'now'`);
  }
  validateOrdered(def.ordered, def.batch !== undefined, fail);
  return def as unknown as ConsumerDefinition;
}

/** Checks `ordered` (see {@link ConsumerOptions.ordered}). */
function validateOrdered(ordered: unknown, isBatch: boolean, fail: (m: string) => never): void {
  if (ordered === undefined || ordered === false) return;
  if (ordered !== true) {
    const mode =
      typeof ordered === 'object' && ordered !== null
        ? (ordered as { onDeadLetter?: unknown }).onDeadLetter
        : null;
    if (mode !== undefined && mode !== 'block' && mode !== 'skip') {
      fail(`ordered must be true, false or { onDeadLetter: 'block' | 'skip' }`);
    }
  }
  // Ordered batches would need a key's notifications split across batch jobs in order and no
  // two batches of one key at once; not built yet, so refused rather than silently unordered.
  if (isBatch) fail('ordered is not supported with batch (use a one-notification consumer)');
}

/** Checks a list of definitions, refusing duplicate ids. */
export function validateConsumers(
  entries: { value: unknown; where: string }[],
): ConsumerDefinition[] {
  const seen = new Map<string, string>();
  return entries.map(({ value, where }) => {
    const def = validateConsumer(value, where);
    const previous = seen.get(def.id);
    if (previous) {
      throw new UsageError(
        `duplicate consumer id ${JSON.stringify(def.id)} in ${where} (also in ${previous})`,
        'PGQ_DUPLICATE_CONSUMER',
      );
    }
    seen.set(def.id, where);
    return def;
  });
}

const CONSUMER_FILE = /\.(m?ts|m?js)$/;

/**
 * Loads every consumer file of a directory (`.ts`, `.mts`, `.js`, `.mjs`; not `.d.ts`): each file's
 * default export is a consumer definition or an array of them.
 */
export async function loadConsumersDir(dir: string): Promise<ConsumerDefinition[]> {
  const absolute = resolve(dir);
  let names: string[];
  try {
    if (!statSync(absolute).isDirectory()) throw new Error('not a directory');
    names = readdirSync(absolute);
  } catch (error) {
    throw new UsageError(`consumers-dir: cannot read ${absolute}: ${(error as Error).message}`);
  }
  const files = names.filter((n) => CONSUMER_FILE.test(n) && !/\.d\.m?ts$/.test(n)).sort();
  const entries: { value: unknown; where: string }[] = [];
  for (const name of files) {
    const path = join(absolute, name);
    let mod: Record<string, unknown>;
    try {
      mod = await importUserFile(path);
    } catch (error) {
      throw new UsageError(
        `consumers-dir: ${path} failed to load: ${error instanceof Error ? error.message : String(error)}`,
        'PGQ_CONSUMER_LOAD',
      );
    }
    if (mod.default === undefined) {
      throw new UsageError(
        `consumers-dir: ${path} has no default export (export default defineConsumer({...}))`,
        'PGQ_INVALID_CONSUMER',
      );
    }
    const values = Array.isArray(mod.default) ? mod.default : [mod.default];
    for (const value of values) entries.push({ value, where: path });
  }
  return validateConsumers(entries);
}

/** Applies `--consumers` / `--exclude-consumers`; unknown ids are a usage error. */
export function selectConsumers(
  all: ConsumerDefinition[],
  include?: string[],
  exclude?: string[],
): ConsumerDefinition[] {
  const known = new Set(all.map((c) => c.id));
  for (const id of [...(include ?? []), ...(exclude ?? [])]) {
    if (!known.has(id)) {
      throw new UsageError(
        `unknown consumer ${JSON.stringify(id)}; known: ${[...known].join(', ') || '(none)'}`,
      );
    }
  }
  return all.filter(
    (c) => (!include || include.includes(c.id)) && !(exclude && exclude.includes(c.id)),
  );
}
