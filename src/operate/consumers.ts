import { Job, Queue } from 'bullmq';
import pg from 'pg';
import { sessionSettings } from '../db/pool.js';
import type { Settings } from '../config.js';
import { jobIdFor } from '../bridge/plan.js';
import { ConsumerAdmin, type ConsumerRecord } from '../db/consumer-admin.js';
import { PgqError, UsageError } from '../errors.js';
import { assertChannel, assertConsumerId } from '../identifiers.js';
import { redactSecrets, silentLogger, type Logger } from '../log.js';
import {
  closeRedis,
  createRedis,
  queuePrefix,
  type RedisConnection,
  type RedisSettings,
} from '../redis.js';
import { errorMessage, withTimeout } from '../util.js';
import { assertSchemaCurrent } from './checks.js';
import { queueFigures, type JobCounts } from './status.js';
import { promoteSuccessor } from '../consume/promotion.js';

/** Settings the consumer commands need. */
export type ConsumerAdminSettings = Pick<Settings, 'databaseUrl' | 'schema' | 'prefix'> &
  RedisSettings;

/** One consumer as {@link listConsumers} reports it. */
export interface ConsumerListing extends ConsumerRecord {
  /** BullMQ job counts of its queue; null when Redis did not answer in time. */
  queue: JobCounts | null;
}

/** Options shared by the consumer commands. */
export interface ConsumerAdminOptions {
  settings: ConsumerAdminSettings;
  logger?: Logger;
  /** Bound on each Redis step and on the subscriptions lock wait, in ms (default 10 s). */
  timeoutMs?: number;
}

async function withConnections<T>(
  options: ConsumerAdminOptions,
  fn: (db: pg.Client, redis: RedisConnection, admin: ConsumerAdmin) => Promise<T>,
): Promise<T> {
  const log = options.logger ?? silentLogger();
  const { settings } = options;
  const db = new pg.Client({
    connectionString: settings.databaseUrl,
    connectionTimeoutMillis: 10_000,
    application_name: 'pgq-bridge consumers',
    ...sessionSettings('command'),
  });
  db.on('error', (error) => log.warn({ err: redactSecrets(error.message) }, 'Postgres failed'));
  const redis = createRedis(settings, log, 'consumers');
  try {
    try {
      await db.connect();
    } catch (error) {
      throw new PgqError(
        'PGQ_POSTGRES_UNREACHABLE',
        `cannot connect to Postgres at ${redactSecrets(settings.databaseUrl)}: ${errorMessage(error)}`,
      );
    }
    await assertSchemaCurrent(db, settings.schema);
    return await fn(db, redis, new ConsumerAdmin(settings.schema));
  } finally {
    await closeRedis(redis);
    await db.end().catch(() => undefined);
  }
}

async function knownConsumer(
  db: pg.Client,
  admin: ConsumerAdmin,
  id: string,
): Promise<{ channels: string[]; retiredAt: Date | null }> {
  assertConsumerId(id);
  const found = await admin.find(db, id);
  if (!found) {
    const known = (await admin.list(db)).map((c) => c.id);
    throw new UsageError(
      `unknown consumer ${JSON.stringify(id)}; registered: ${known.join(', ') || '(none)'}`,
      'PGQ_UNKNOWN_CONSUMER',
    );
  }
  return found;
}

/**
 * Every registered consumer (retired ones too) with its channels, job options, ordering and
 * other settings of the definition in force, the worker last seen, and its backlog: rows owed
 * but not yet jobs, dead letters in the ledger, and its BullMQ queue's job counts.
 */
export async function listConsumers(options: ConsumerAdminOptions): Promise<ConsumerListing[]> {
  const log = options.logger ?? silentLogger();
  return withConnections(options, async (db, redis, admin) => {
    const consumers = await admin.list(db);
    const prefix = queuePrefix(options.settings);
    return Promise.all(
      consumers.map(async (c) => {
        const queue = new Queue(c.id, { connection: redis, prefix });
        try {
          const figures = await withTimeout(
            queueFigures(queue),
            options.timeoutMs ?? 10_000,
            'Redis did not answer',
          );
          return { ...c, queue: figures.counts };
        } catch (error) {
          log.warn({ consumer: c.id, err: errorMessage(error) }, 'no queue figures from Redis');
          return { ...c, queue: null };
        } finally {
          await queue.close().catch(() => undefined);
        }
      }),
    );
  });
}

/** Options of {@link removeConsumer}. */
export interface RemoveConsumerOptions extends ConsumerAdminOptions {
  consumer: string;
  /** Unsubscribe these channels only; without it, the consumer is retired. */
  channels?: string[];
}

/** What {@link removeConsumer} did. */
export interface RemoveConsumerResult {
  consumer: string;
  /** Channels unsubscribed. */
  removedChannels: string[];
  /** Whether the consumer was retired (no `channels` given). */
  retired: boolean;
  /** Channels it still subscribes to. */
  remainingChannels: string[];
}

/**
 * Unsubscribes a consumer from channels, or retires it. Either way the listener stops making
 * jobs for it on those channels, its rows there stop holding up `cleanup`, and workers running a
 * definition registered before the removal do not subscribe it again (a definition first
 * registered later does). Jobs already in its queue stay; workers that list their channel still
 * run them, others complete them without running their handler.
 *
 * @throws UsageError for an unknown consumer or a channel it does not subscribe to
 */
export async function removeConsumer(
  options: RemoveConsumerOptions,
): Promise<RemoveConsumerResult> {
  const channels = options.channels ? [...new Set(options.channels)] : null;
  if (channels) {
    if (channels.length === 0) throw new UsageError('--channels: name at least one channel');
    channels.forEach((c) => assertChannel(c));
  }
  return withConnections(options, async (db, _redis, admin) => {
    const found = await knownConsumer(db, admin, options.consumer);
    const unknown = channels?.filter((c) => !found.channels.includes(c)) ?? [];
    if (unknown.length > 0) {
      throw new UsageError(
        `consumer ${options.consumer} does not subscribe to ${unknown.join(', ')}; it subscribes to ${
          found.channels.join(', ') || '(nothing)'
        }`,
        'PGQ_UNKNOWN_SUBSCRIPTION',
      );
    }
    const removed = await admin.remove(db, options.consumer, channels, options.timeoutMs ?? 10_000);
    return {
      consumer: options.consumer,
      removedChannels: removed,
      retired: channels === null,
      remainingChannels: found.channels.filter((c) => !removed.includes(c)),
    };
  });
}

/** Options of {@link skipDelivery}. */
export interface SkipDeliveryOptions extends ConsumerAdminOptions {
  consumer: string;
  /** The notification id (a decimal string). */
  notificationId: string;
}

/** What {@link skipDelivery} did. */
export interface SkipDeliveryResult {
  consumer: string;
  notificationId: string;
  /** The ledger's outcome before ('failed', or null while the job was still retrying). */
  previousStatus: 'failed' | 'skipped' | null;
  /** The BullMQ job's state before it was removed; null when BullMQ no longer had it. */
  jobState: string | null;
  /** False when it was already skipped (nothing changed). */
  changed: boolean;
}

/** Job states a delivery may be given up in: a dead letter, or one waiting for its next try. */
const SKIPPABLE_STATES = new Set(['failed', 'delayed', 'waiting', 'prioritized', 'wait']);

/**
 * Gives up one dead letter: records the delivery as 'skipped' in the ledger (final: never
 * replayed by `reconcile --failed`, no longer holds up `cleanup` nor an ordering key) and
 * removes its BullMQ job, so nothing runs it again. Also accepts a delivery whose job is still
 * waiting for a retry. Refuses one that completed or is running right now.
 *
 * @throws UsageError for a bad or unknown consumer or notification id, or a delivery that is not
 *   a dead letter; PgqError `PGQ_DELIVERY_ACTIVE` while an attempt runs
 */
export async function skipDelivery(options: SkipDeliveryOptions): Promise<SkipDeliveryResult> {
  const { consumer, notificationId } = options;
  if (typeof notificationId !== 'string' || !/^[1-9]\d{0,18}$/.test(notificationId)) {
    throw new UsageError(
      `invalid notification id ${JSON.stringify(notificationId)}: expected a positive integer`,
      'PGQ_INVALID_NOTIFICATION_ID',
    );
  }
  return withConnections(options, async (db, redis, admin) => {
    await knownConsumer(db, admin, consumer);
    const delivery = await admin.delivery(db, consumer, notificationId);
    if (!delivery || (delivery.status === null && !delivery.subscribed)) {
      throw new UsageError(
        `notification ${notificationId} is not a delivery of consumer ${consumer} (no such notification on its channels, nothing in the ledger)`,
        'PGQ_UNKNOWN_DELIVERY',
      );
    }
    const result = (jobState: string | null, changed: boolean): SkipDeliveryResult => ({
      consumer,
      notificationId,
      previousStatus: delivery.status === 'completed' ? null : delivery.status,
      jobState,
      changed,
    });
    if (delivery.status === 'completed') {
      throw new UsageError(
        `notification ${notificationId} is no dead letter: consumer ${consumer} completed it`,
        'PGQ_NOT_DEAD_LETTER',
      );
    }
    const queue = new Queue(consumer, { connection: redis, prefix: queuePrefix(options.settings) });
    try {
      const timeoutMs = options.timeoutMs ?? 10_000;
      const job = await withTimeout(
        Job.fromId(queue, jobIdFor(notificationId)),
        timeoutMs,
        'Redis did not answer',
      );
      const state = job
        ? await withTimeout(job.getState(), timeoutMs, 'Redis did not answer')
        : null;
      if (delivery.status === 'skipped') {
        if (job && state !== 'active') await job.remove();
        return result(state, false);
      }
      if (state === 'active') {
        throw new PgqError(
          'PGQ_DELIVERY_ACTIVE',
          `notification ${notificationId} is being handled by consumer ${consumer} right now; try again when the attempt ends`,
        );
      }
      if (delivery.status !== 'failed' && !(state !== null && SKIPPABLE_STATES.has(state))) {
        throw new UsageError(
          `notification ${notificationId} is no dead letter of consumer ${consumer}: ${
            state === null ? 'it has no job yet' : `its job is ${state}`
          }`,
          'PGQ_NOT_DEAD_LETTER',
        );
      }
      const attempts = delivery.attempts ?? job?.attemptsMade ?? 0;
      if (!(await admin.recordSkipped(db, consumer, notificationId, attempts))) {
        throw new UsageError(
          `notification ${notificationId} of consumer ${consumer} finished meanwhile; nothing skipped`,
          'PGQ_NOT_DEAD_LETTER',
        );
      }
      // After the ledger: a job that outlived a failed removal is skipped by the ledger check.
      if (job) await withTimeout(job.remove(), timeoutMs, 'Redis did not remove the job');
      // An ordered consumer's key moves on now rather than when its next one's wait ends.
      await promoteSuccessor(db, queue, options.settings.schema, consumer, notificationId);
      return result(state, true);
    } finally {
      await queue.close().catch(() => undefined);
    }
  });
}
