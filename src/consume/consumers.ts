import type { Job } from 'bullmq';
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

/**
 * A packed consumer: `batch` with a plain `handle` (no `handleBatch`). Notifications travel up to
 * `batch.size` per BullMQ job, and `handle` still runs once per notification (up to
 * `concurrency` at once), each with its own attempts, backoff, ledger row and dead letter
 * (docs/performance.md, "Packed delivery").
 */
export interface PlainPackedConsumerDefinition<Payload = unknown> extends ConsumerOptions {
  /** Up to `size` notifications per BullMQ job; `maxWaitMs` as for a batch consumer. */
  batch: { size: number; maxWaitMs: number };
  transactional?: false;
  handleBatch?: undefined;
  /** Handles one notification (as for a one-notification consumer). */
  handle(notification: Notification<Payload>, job: Job, ctx: HandlerContext): unknown;
}

/** A packed consumer whose every handler run has a Postgres transaction of its own (`ctx.db`). */
export interface TransactionalPackedConsumerDefinition<Payload = unknown> extends ConsumerOptions {
  /** Up to `size` notifications per BullMQ job; `maxWaitMs` as for a batch consumer. */
  batch: { size: number; maxWaitMs: number };
  transactional: true;
  handleBatch?: undefined;
  /** Handles one notification inside its own transaction (`ctx.db`). */
  handle(notification: Notification<Payload>, job: Job, ctx: TransactionalHandlerContext): unknown;
}

/** A consumer whose notifications travel packed but are handled one by one. */
export type PackedConsumerDefinition<Payload = unknown> =
  PlainPackedConsumerDefinition<Payload> | TransactionalPackedConsumerDefinition<Payload>;

/** A consumer definition: a plain object; see SPEC.md. */
export type ConsumerDefinition<Payload = unknown> =
  | SingleConsumerDefinition<Payload>
  | BatchConsumerDefinition<Payload>
  | PackedConsumerDefinition<Payload>;

/** Whether a definition is a packed consumer (`batch` with `handle`, no `handleBatch`). */
export function isPacked(def: ConsumerDefinition): def is PackedConsumerDefinition {
  return (
    def.batch !== undefined && typeof (def as { handleBatch?: unknown }).handleBatch !== 'function'
  );
}

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

/** The channel names of a consumer (channel objects from `defineChannel` contribute their name). */
export function channelNames(def: ConsumerOptions): string[] {
  return def.channels.map((c) => (typeof c === 'string' ? c : c.name));
}
