import { DelayedError, Job, Queue, type ConnectionOptions } from 'bullmq';
import type { ConsumerOptions } from './consumers.js';
import type { NotificationJobData } from './notification.js';
import { jobIdFor } from '../bridge/plan.js';
import {
  finishedStatuses,
  type DeadLetterMode,
  OrderingSql,
  type KeyedDelivery,
  type Predecessor,
} from '../db/ordering.js';
import type { Queryable } from '../db/store.js';
import { redactSecrets, type Logger } from '../log.js';
import { errorMessage } from '../util.js';

export type { DeadLetterMode } from '../db/ordering.js';

/** A consumer's ordering: null when it is not ordered. */
export function deadLetterModeOf(def: Pick<ConsumerOptions, 'ordered'>): DeadLetterMode | null {
  const ordered = def.ordered;
  if (ordered === undefined || ordered === false) return null;
  if (ordered === true) return 'block';
  return ordered.onDeadLetter ?? 'block';
}

/**
 * First re-check of a waiting notification, doubled on each further wait up to
 * {@link MAX_WAIT_MS}. Long on purpose: a waiting notification is promoted the moment the one
 * before it finishes (and looks again right after it moved to the delayed set, which closes the
 * race with that promotion), so the wait is only a safety net for a promotion lost to a Redis or
 * Postgres error. Short waits made every queued notification of a busy key come back again and
 * again for nothing: 10 keys drained at 60/s with 0.5 s, against 875/s unordered.
 */
export const FIRST_WAIT_MS = 5000;
/** Longest wait between two checks (see {@link FIRST_WAIT_MS}). */
export const MAX_WAIT_MS = 60_000;

/**
 * How long a job waits before it looks again, after `waits` earlier waits. Jittered (±25%) so
 * that the notifications queued behind one key do not all wake in the same millisecond.
 */
export function waitMs(waits: number, random = Math.random): number {
  const base = Math.min(MAX_WAIT_MS, FIRST_WAIT_MS * 2 ** Math.min(waits, 10));
  return Math.round(base * (0.75 + random() / 2));
}

/**
 * Times this job already waited for its key: BullMQ counts every start (`attemptsStarted`) but
 * moving a job to delayed uses no attempt (`attemptsMade`), so the difference is the waits (plus
 * stalled restarts, which only lengthen the next wait).
 */
export function waitsOf(job: Pick<Job, 'attemptsStarted' | 'attemptsMade'>): number {
  return Math.max(0, job.attemptsStarted - job.attemptsMade - 1);
}

/** Runs `load` once for every item requested in the same tick of the event loop. */
class TickBatch<I, O> {
  private pending: {
    item: I;
    resolve: (o: O | undefined) => void;
    reject: (e: unknown) => void;
  }[] = [];

  constructor(
    private readonly load: (items: I[]) => Promise<Map<string, O>>,
    private readonly idOf: (item: I) => string,
  ) {}

  get(item: I): Promise<O | undefined> {
    return new Promise((resolve, reject) => {
      if (this.pending.length === 0) setImmediate(() => void this.flush());
      this.pending.push({ item, resolve, reject });
    });
  }

  private async flush(): Promise<void> {
    const batch = this.pending;
    this.pending = [];
    try {
      const found = await this.load(batch.map((b) => b.item));
      for (const b of batch) b.resolve(found.get(this.idOf(b.item)));
    } catch (error) {
      for (const b of batch) b.reject(error);
    }
  }
}

/** What a {@link KeyGate} needs from its worker. */
export interface KeyGateDeps {
  sql: OrderingSql;
  db: Queryable;
  log: Logger;
  /** The consumer's queue (to promote the next job of a key). */
  queue: () => Queue;
}

/**
 * The ordering gate of one ordered consumer (docs/ordering.md). Before a keyed job runs,
 * {@link admit} asks the ledger whether the notification owed just before it with the same key
 * is finished; if not, the job goes back to BullMQ's delayed set without using an attempt. After
 * a delivery finished (its outcome committed), {@link release} promotes the job of the next
 * notification of the key, so it starts now rather than when its wait ends.
 */
export class KeyGate {
  private readonly finished: Set<string>;
  private readonly before: TickBatch<KeyedDelivery, Predecessor>;
  private readonly after: TickBatch<KeyedDelivery, string>;

  constructor(
    readonly consumerId: string,
    readonly mode: DeadLetterMode,
    private readonly deps: KeyGateDeps,
  ) {
    this.finished = new Set(finishedStatuses(mode));
    const idOf = (d: KeyedDelivery): string => d.id;
    this.before = new TickBatch((items) => deps.sql.predecessors(deps.db, consumerId, items), idOf);
    this.after = new TickBatch((items) => deps.sql.successors(deps.db, consumerId, items), idOf);
  }

  /** Whether the predecessor lets the next notification of its key start. */
  private isClear(prev: Predecessor | undefined): boolean {
    return !prev || prev.id === null || (prev.status !== null && this.finished.has(prev.status));
  }

  /**
   * Resolves when the job may run now. Otherwise moves it to BullMQ's delayed set (no attempt
   * used) and throws BullMQ's `DelayedError`, which the processor must let through.
   */
  async admit(job: Job, token: string | undefined, data: NotificationJobData): Promise<void> {
    if (data.key === undefined) return;
    const delivery = { id: data.id, key: data.key };
    let prev: Predecessor | undefined;
    try {
      prev = await this.before.get(delivery);
    } catch (error) {
      // Postgres is unreachable: wait without spending an attempt; the ledger decides later.
      this.deps.log.warn(
        {
          consumer: this.consumerId,
          notificationId: data.id,
          err: redactSecrets(errorMessage(error)),
        },
        'ordering check failed; the notification waits and checks again',
      );
      await this.wait(job, token, waitMs(waitsOf(job)));
      throw new DelayedError('ordering check failed; waiting');
    }
    if (this.isClear(prev)) return;
    // A dead letter ahead: only a replay or a skip releases it, and both promote us.
    const waits = prev?.status === 'failed' ? 10 : waitsOf(job);
    await this.wait(job, token, waitMs(waits));
    // The predecessor may have finished between our look and the move, and its promotion then
    // found us still active: look once more now that we are in the delayed set.
    const again = await this.before.get(delivery).catch(() => prev);
    if (this.isClear(again)) await job.promote().catch(() => undefined);
    if (this.deps.log.isLevelEnabled('debug')) {
      this.deps.log.debug(
        { consumer: this.consumerId, notificationId: data.id, key: data.key, after: prev?.id },
        'waiting for an earlier notification of its key',
      );
    }
    throw new DelayedError(`notification ${data.id} waits for ${prev?.id ?? '?'} (same key)`);
  }

  private async wait(job: Job, token: string | undefined, ms: number): Promise<void> {
    // The processor's token argument, or the one BullMQ sets on the job (a wrapper such as the
    // tracing span may not pass the argument on).
    const lock = token ?? job.token;
    if (lock === undefined) throw new Error('ordered consumer: BullMQ gave no job token');
    await job.moveToDelayed(Date.now() + ms, lock);
  }

  /**
   * After a keyed delivery finished for good (completed; failed in `'skip'` mode; found already
   * completed), with its outcome in Postgres: promotes the job of the next notification of its
   * key if it is waiting. Never throws: a lost promotion only lets the next one wait out its
   * delay.
   */
  async release(data: NotificationJobData): Promise<void> {
    if (data.key === undefined) return;
    try {
      const next = await this.after.get({ id: data.id, key: data.key });
      if (next === undefined) return;
      await promoteJob(this.deps.queue(), jobIdFor(next));
    } catch (error) {
      this.deps.log.warn(
        {
          consumer: this.consumerId,
          notificationId: data.id,
          err: redactSecrets(errorMessage(error)),
        },
        'could not promote the next notification of the key; it starts when its wait ends',
      );
    }
  }
}

/**
 * The gate of a consumer definition: undefined when it is not ordered. `ledger` false (a
 * benchmark's worker without the delivery ledger) is refused: the gate reads the ledger, so
 * nothing would ever be let through.
 */
export function createKeyGate(
  def: Pick<ConsumerOptions, 'id' | 'ordered'>,
  deps: KeyGateDeps & { ledger: boolean },
): KeyGate | undefined {
  const mode = deadLetterModeOf(def);
  if (mode === null) return undefined;
  if (!deps.ledger) throw new RangeError(`consumer ${def.id}: ordered needs the delivery ledger`);
  return new KeyGate(def.id, mode, deps);
}

/**
 * Moves a delayed job to waiting; a job that is not delayed (waiting, active, not yet bridged)
 * is left alone. One round trip: the job is addressed by id, not fetched.
 */
export async function promoteJob(queue: Queue, jobId: string): Promise<boolean> {
  try {
    await new Job(queue, 'promote', null, {}, jobId).promote();
    return true;
  } catch (error) {
    // BullMQ's texts for "not in the delayed state" and "no such job" (finished-errors.js).
    if (/not in the delayed state|Missing key for job/.test(errorMessage(error))) return false;
    throw error;
  }
}

/**
 * A getter that opens the consumer's Queue on first use and adds it to `opened` (which the
 * worker closes at shutdown).
 */
export function lazyQueue(
  name: string,
  where: { connection: ConnectionOptions; prefix: string },
  opened: Queue[],
): () => Queue {
  let queue: Queue | undefined;
  return () => {
    if (!queue) {
      queue = new Queue(name, { connection: where.connection, prefix: where.prefix });
      opened.push(queue);
    }
    return queue;
  };
}

/**
 * After `consumers skip` gave up a delivery: promotes the job of the next notification of its
 * key (ordered consumers only), so the released key moves on at once. Best effort: the next one
 * also finds its way when its wait ends.
 */
export async function promoteSuccessor(
  db: Queryable,
  queue: Queue,
  schema: string,
  consumerId: string,
  notificationId: string,
): Promise<void> {
  const next = await new OrderingSql(schema)
    .successorOfId(db, consumerId, notificationId)
    .catch(() => null);
  if (next !== null) await promoteJob(queue, jobIdFor(next)).catch(() => false);
}
