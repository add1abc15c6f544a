import { DelayedError, type Job, type Queue } from 'bullmq';
import type { ConsumerOptions } from './consumers.js';
import type { NotificationJobData } from './notification.js';
import { TickBatch } from './tick-batch.js';
import { waitMs, waitsOf } from './waits.js';
import { byId, firstOfEachKey, lastOfEachKey, type PackTurn } from './pack-turn.js';
import { promoteWaiting, recordWaiting } from './promotion.js';
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

/** What a {@link KeyGate} needs from its worker. */
export interface KeyGateDeps {
  sql: OrderingSql;
  db: Queryable;
  log: Logger;
  /** The consumer's queue (to promote the next job of a key). */
  queue: () => Queue;
  /**
   * The consumer's jobs may carry several notifications (batch and packed consumers): a
   * promotion then also looks for the job recorded as waiting for the notification
   * ({@link KeyGate.waitForRest}), whose id is not derivable from it.
   */
  packs?: boolean;
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
  /** Keys held by the jobs of this process that {@link admitPack} let through (count each). */
  private readonly held = new Map<string, number>();

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
  async release(data: Pick<NotificationJobData, 'id' | 'key'>): Promise<void> {
    if (data.key === undefined) return;
    try {
      const next = await this.after.get({ id: data.id, key: data.key });
      if (next === undefined) return;
      await promoteWaiting(this.deps.queue(), next, this.deps.packs === true);
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

  /**
   * Splits the notifications of a job (a pack, a merged group, a single one) into those whose
   * turn has come and those that must wait. A keyed notification may run when the notification
   * owed just before it with its key is finished or is itself ready in this list, and no other
   * job of this process holds its key. Notifications without a key are always ready. One
   * batched statement (with the other jobs asking in the same tick). Throws on a Postgres error.
   * With `hold`, the ready ones' keys are held in the same synchronous step as the check: the
   * other jobs answered by the same batched statement resume right after this one, and must see
   * them held (else two jobs holding one notification both run it, at once).
   */
  async turnOf(entries: readonly NotificationJobData[], hold = false): Promise<PackTurn> {
    const sorted = [...entries].sort(byId);
    const keyed = sorted.filter(
      (e): e is KeyedDelivery & NotificationJobData => e.key !== undefined,
    );
    const prevs = await this.before.getAll(keyed.map((e) => ({ id: e.id, key: e.key })));
    const turn: PackTurn = { ready: [], waiting: [], behindDeadLetter: false };
    const readyIds = new Set<string>();
    const blocked = new Set<string>();
    for (const e of sorted) {
      if (e.key === undefined) {
        turn.ready.push(e);
        continue;
      }
      const prev = prevs.get(e.id);
      const clear =
        !blocked.has(e.key) &&
        !this.held.has(e.key) &&
        (this.isClear(prev) || (prev?.id != null && readyIds.has(prev.id)));
      if (clear) {
        turn.ready.push(e);
        readyIds.add(e.id);
        continue;
      }
      if (!blocked.has(e.key) && prev?.status === 'failed') turn.behindDeadLetter = true;
      blocked.add(e.key);
      turn.waiting.push(e);
    }
    if (hold) {
      for (const e of turn.ready) {
        if (e.key !== undefined) this.held.set(e.key, (this.held.get(e.key) ?? 0) + 1);
      }
    }
    return turn;
  }

  /**
   * The gate of a job carrying several notifications. Resolves with its {@link PackTurn} when
   * at least one notification may run; the ready ones' keys are then held in this process
   * until {@link letGo} (call it in a `finally`). When none may run, the job waits in BullMQ's
   * delayed set (no attempt used; see {@link waitForRest}) and this throws `DelayedError`.
   *
   * The caller runs `ready` (in this order per key), records their outcomes in Postgres, calls
   * {@link releaseAll} for the finished ones and {@link letGo}, and then, if `waiting` is not
   * empty, {@link waitForRest}: the job comes back when their turn has come, and the ledger
   * leaves out what already completed. Running the ready part first (rather than waiting until
   * every key of the job may run) is what makes two jobs that each hold a key the other waits
   * for (several listeners, replays, split batches) unable to wait for each other for ever.
   */
  async admitPack(
    job: Job,
    token: string | undefined,
    entries: readonly NotificationJobData[],
  ): Promise<PackTurn> {
    let turn: PackTurn;
    try {
      turn = await this.turnOf(entries, true);
    } catch (error) {
      this.deps.log.warn(
        { consumer: this.consumerId, jobId: job.id, err: redactSecrets(errorMessage(error)) },
        'ordering check failed; the job waits and checks again',
      );
      await this.wait(job, token, waitMs(waitsOf(job)));
      throw new DelayedError('ordering check failed; waiting');
    }
    if (turn.ready.length === 0) return this.waitForRest(job, token, turn);
    return turn;
  }

  /** Lets go of the keys {@link admitPack} held for `ready`. */
  letGo(ready: readonly NotificationJobData[]): void {
    for (const e of ready) {
      if (e.key === undefined) continue;
      const n = (this.held.get(e.key) ?? 1) - 1;
      if (n <= 0) this.held.delete(e.key);
      else this.held.set(e.key, n);
    }
  }

  /**
   * Sends the job back to BullMQ's delayed set until the `waiting` notifications' turn comes,
   * and throws `DelayedError` (let it through the processor). Records the job as waiting for
   * the first waiting notification of each key, so that the promotion made when its predecessor
   * finishes ({@link release}, {@link releaseAll}, `consumers skip`) finds it; then looks once
   * more, now that it is delayed, which closes the race with a promotion made meanwhile. The
   * delay (5 s doubling to 60 s, 60 s behind a dead letter) is only the safety net.
   */
  async waitForRest(job: Job, token: string | undefined, turn: PackTurn): Promise<never> {
    const firsts = firstOfEachKey(turn.waiting).map((e) => e.id);
    if (job.id !== undefined) {
      await recordWaiting(this.deps.queue(), job.id, firsts).catch((error: unknown) =>
        this.deps.log.warn(
          { consumer: this.consumerId, jobId: job.id, err: redactSecrets(errorMessage(error)) },
          'could not record the waiting job; it starts when its wait ends',
        ),
      );
    }
    await this.wait(job, token, waitMs(turn.behindDeadLetter ? 10 : waitsOf(job)));
    const again = await this.turnOf(turn.waiting).catch(() => turn);
    if (again.ready.length > 0) await job.promote().catch(() => undefined);
    throw new DelayedError(
      `job ${job.id ?? '?'} waits for earlier notifications of ${firsts.length} key(s)`,
    );
  }

  /**
   * After the notifications of a job finished (outcomes in Postgres): promotes, for each key
   * among them, the job of the next notification of the key (its own `n<id>` job, or the job
   * recorded as waiting for it). Never throws.
   */
  async releaseAll(finished: readonly NotificationJobData[]): Promise<void> {
    await Promise.all(lastOfEachKey(finished).map((e) => this.release(e)));
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
