import type { Job } from 'bullmq';
import type { SingleConsumerDefinition } from './consumers.js';
import type { Queryable, Store } from '../db/store.js';
import type { LedgerWriter } from './ledger.js';
import type { Logger } from '../log.js';
import type { Metrics } from '../operate/metrics.js';
import type { Attempts } from './attempt.js';
import type { CompletedLookup } from './ledger-lookup.js';
import type { TransactionRunner } from './transaction.js';
import type { KeyGate } from './ordering.js';
import type { Slots } from './slots.js';
import { attemptOf, isPermanent, singleEntryOf } from './job-data.js';
import { toNotification, type Notification, type NotificationJobData } from './notification.js';
import { errorMessage } from '../util.js';
import { withPayloads } from './payload-refs.js';

/** What the per-job pipeline needs from the worker that hosts it. */
export interface ProcessorDeps {
  store: Store;
  db: Queryable;
  log: Logger;
  metrics?: Metrics;
  /** Writes outcomes; undefined when the ledger is off (benchmarks only). */
  ledger: LedgerWriter | undefined;
  /** Asks the ledger what already ran (batched); undefined when the ledger is off. */
  lookup: CompletedLookup | undefined;
  /** Runs handler attempts with their signal (shared by the process's consumers). */
  attempts: Attempts;
  /** Leaves a job of a channel this definition does not list to other workers (rolling deploys). */
  leaveForeign?: (job: Job, channels: readonly string[]) => Promise<unknown>;
  /** Runs the attempts of transactional consumers (set when this process has any). */
  transactions: TransactionRunner | undefined;
  /** The ordering gate of an ordered consumer (docs/ordering.md); undefined otherwise. */
  gate?: KeyGate;
  /** The consumer's handler slots (`concurrency`); BullMQ holds more jobs than that. */
  slots?: Slots;
}

/** What the processor returns for a job the ledger already records as completed. */
const SKIPPED = { skipped: 'already completed per the ledger' } as const;

/**
 * The BullMQ processor of a one-notification-per-job consumer. One job goes through these steps,
 * each a function of its own so that features hook in at one place:
 *
 * 1. {@link singleEntryOf}: the job's notification data (a job without data fails permanently);
 *    a job of a channel this definition does not list is left for a worker that lists it
 *    (`leaveForeign`, src/consume/foreign-channel.ts).
 * 2. {@link alreadyCompleted}: the ledger decides whether the delivery already ran (every
 *    attempt, in one batched query with the other jobs starting meanwhile).
 * 2b. Ordered consumers: `gate.admit` lets the job run only when the notification before it with
 *    the same key is finished (else it waits in BullMQ's delayed set); `gate.release` promotes
 *    the next one of the key once this one's outcome is in Postgres.
 * 3. {@link notificationOf}: job data → the handler's `Notification`.
 * 4. {@link runHandler}: the handler with its `ctx` (signal, timeout), holding the slot until
 *    the handler settles; for a transactional consumer inside its transaction, which claims the
 *    delivery in the ledger first (and skips it when completed).
 * 5. The outcome: ledger, metrics, logs ({@link completed} / {@link failed}).
 */
export function createJobProcessor(
  def: SingleConsumerDefinition,
  deps: ProcessorDeps,
): (job: Job, token?: string) => Promise<unknown> {
  return async (job: Job, token?: string) => {
    const data = singleEntryOf(job);
    const unsubscribed = await deps.leaveForeign?.(job, [data.channel]);
    if (unsubscribed) return unsubscribed;
    const attempt = attemptOf(job);
    const isReplay = data.replay === true;
    if (await alreadyCompleted(def, deps, data)) return skipped(def, deps, data, attempt);
    await deps.gate?.admit(job, token, data);
    // A payload over the inline limit travels by reference: read it from the row first.
    const [loaded] = await withPayloads(deps.db, deps.store.schema, [data]);
    const notification = notificationOf(loaded, attempt, isReplay);
    // The ledger and gate are asked before a slot is taken, so their round trips overlap the
    // handlers running meanwhile (src/consume/slots.ts).
    const release = await deps.slots?.acquire();
    const started = performance.now();
    let ran: Ran;
    try {
      ran = await runHandler(def, deps, notification, job).finally(release);
    } catch (error) {
      const final = await failed(def, deps, job, data, attempt, started, error);
      if (final && deps.gate?.mode === 'skip') await deps.gate.release(data);
      throw error;
    }
    if (!ran.ran) return skipped(def, deps, data, attempt);
    await completed(def, deps, job, data, attempt, started);
    await deps.gate?.release(data);
    return ran.result ?? null;
  };
}

/** Whether the handler ran (a transactional attempt finds a completed delivery in its lock). */
type Ran = { ran: true; result: unknown } | { ran: false };

async function skipped(
  def: SingleConsumerDefinition,
  deps: ProcessorDeps,
  data: NotificationJobData,
  attempt: number,
): Promise<typeof SKIPPED> {
  deps.log.debug(
    { notificationId: data.id, channel: data.channel, consumer: def.id, attempt },
    'skipped: already completed per the ledger',
  );
  // The run that completed it may have died before promoting the next one of its key.
  await deps.gate?.release(data);
  return SKIPPED;
}

/**
 * Whether the ledger records this delivery as completed: asked before every attempt (batched
 * with the other jobs starting now, see {@link CompletedLookup}), because BullMQ's job id
 * dedupes only while the job exists. A job added again after its twin completed and was removed
 * (`removeOnComplete`), a replay, a stalled restart whose first run finished: the ledger knows.
 */
function alreadyCompleted(
  def: SingleConsumerDefinition,
  deps: ProcessorDeps,
  data: NotificationJobData,
): Promise<boolean> | false {
  // A transactional attempt decides inside its transaction, under the delivery's row lock.
  if (def.transactional || !deps.lookup) return false;
  return deps.lookup.isCompleted(def.id, data.id);
}

/** The handler's view of a job's notification. */
function notificationOf(
  data: NotificationJobData,
  attempt: number,
  isReplay: boolean,
): Notification {
  return toNotification(data, attempt, isReplay);
}

/**
 * One handler attempt: `handle(n, job, ctx)` under the consumer's `timeout`; for a transactional
 * consumer inside the attempt's transaction, whose first statement claims the delivery.
 */
async function runHandler(
  def: SingleConsumerDefinition,
  deps: ProcessorDeps,
  notification: Notification,
  job: Job,
): Promise<Ran> {
  const options = {
    timeoutMs: def.timeout,
    what: `handler of ${def.id}`,
    onTimeout: () =>
      deps.log.warn(
        { notificationId: notification.id, consumer: def.id, timeoutMs: def.timeout },
        'handler timed out; its signal is aborted and the retry waits until it settles',
      ),
  };
  if (!def.transactional) {
    return {
      ran: true,
      result: await deps.attempts.run((ctx) => def.handle(notification, job, ctx), options),
    };
  }
  if (!deps.transactions) throw new Error(`no transaction pool for ${def.id}`);
  const outcome = await deps.transactions.run(
    def.id,
    [notification.id],
    notification.attempt,
    def.timeout,
    (db) =>
      deps.attempts.run(({ signal }) => def.handle(notification, job, { signal, db }), options),
  );
  return outcome.ran ? { ran: true, result: outcome.result } : { ran: false };
}

async function completed(
  def: SingleConsumerDefinition,
  deps: ProcessorDeps,
  job: Job,
  data: NotificationJobData,
  attempt: number,
  started: number,
): Promise<void> {
  // A transactional attempt committed its ledger row with the handler's writes.
  if (!def.transactional) {
    await deps.ledger?.write(
      {
        consumerId: def.id,
        notificationId: data.id,
        status: 'completed',
        attempts: attempt,
        lastError: null,
      },
      // Ordered: the next notification of the key may start once this is in Postgres, so it is
      // written now (as for a job removed at once), not with the next group flush.
      deps.gate ? true : job.opts.removeOnComplete,
    );
  }
  const seconds = (performance.now() - started) / 1000;
  deps.metrics?.observeJob(def.id, 'completed', seconds);
  // Guarded: building the fields costs something on the hot path even when not logged.
  if (deps.log.isLevelEnabled('debug')) {
    deps.log.debug(
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
}

async function failed(
  def: SingleConsumerDefinition,
  deps: ProcessorDeps,
  job: Job,
  data: NotificationJobData,
  attempt: number,
  started: number,
  error: unknown,
): Promise<boolean> {
  const final = isPermanent(error) || attempt >= (job.opts.attempts ?? 1);
  deps.metrics?.observeJob(
    def.id,
    final ? 'failed' : 'retried',
    (performance.now() - started) / 1000,
  );
  const fields = {
    notificationId: data.id,
    channel: data.channel,
    consumer: def.id,
    attempt,
    err: errorMessage(error),
  };
  if (final) deps.log.error(fields, 'handler failed for good (job kept as failed)');
  else deps.log.warn(fields, 'handler failed; will retry');
  if (!final) return false;
  await deps.ledger?.write(
    {
      consumerId: def.id,
      notificationId: data.id,
      status: 'failed',
      attempts: attempt,
      lastError: errorMessage(error).slice(0, 2000),
    },
    // Ordered: a dead letter blocks (or, in 'skip' mode, releases) its key from the moment it
    // is in Postgres; status shows it at once.
    deps.gate ? true : job.opts.removeOnFail,
  );
  return true;
}
