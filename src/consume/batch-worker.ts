import type { Job, JobsOptions } from 'bullmq';
import type { BatchConsumerDefinition } from './consumers.js';
import { callBatchHandler } from './batch-call.js';
import { leaveOutCompleted } from './batch-recheck.js';
import { attemptOf, entriesOf, isPermanent } from './job-data.js';
import { withPayloads } from './payload-refs.js';
import { toNotification, type Notification, type NotificationJobData } from './notification.js';
import { errorMessage } from '../util.js';
import { traceBatchCall } from './tracing.js';
import { runInTurn } from './ordered-batch.js';
import { Slots } from './slots.js';
import type { BatchRunnerDeps } from './batch-deps.js';

const NONE: ReadonlySet<string> = new Set();

/** Jobs a batch consumer's worker may hold at once, beyond `concurrency`, to merge small ones. */
export const MERGE_SLOTS = 16;

/** One BullMQ job waiting for, or taking part in, a handler call. */
interface Member {
  job: Job;
  entries: NotificationJobData[];
  attempt: number;
  isReplay: boolean;
  settle: (error: unknown) => void;
}

/**
 * Runs a batch consumer's jobs (see docs/performance.md, "Batch consumers", for the semantics):
 *
 * - A job carries the notifications the bridge packed together (at most `batch.size`), or one
 *   notification (replays, playback, a split batch). Notifications the ledger already records as
 *   completed are left out, so a job added twice in different groupings is not handled twice in
 *   sequence.
 * - First attempts of jobs smaller than `size` wait up to `maxWaitMs` for other jobs to fill a
 *   handler call (up to {@link MERGE_SLOTS} extra jobs held). If a merged call fails, each job's
 *   notifications are handled again alone, at once: only that outcome counts for the job, so a
 *   bad notification never fails its neighbours.
 * - A failed job is retried by BullMQ (attempts, backoff). When it fails for good (attempts used
 *   up, or `PermanentError`) and holds several notifications, it is split: each notification gets
 *   a job of its own (`n<id>`, full attempts) and the batch job completes with `{ split }`. A
 *   single notification that fails for good is a dead letter, recorded as failed in the ledger.
 * - Ordered consumers run only the notifications whose turn has come ({@link runInTurn}).
 */
export class BatchRunner {
  /** BullMQ concurrency for the consumer's Worker. */
  readonly workerConcurrency: number;
  private readonly size: number;
  private readonly maxWaitMs: number;
  private open: { members: Member[]; count: number; timer: NodeJS.Timeout } | undefined;
  private readonly slots: Slots;

  constructor(
    private readonly def: BatchConsumerDefinition,
    private readonly deps: BatchRunnerDeps,
  ) {
    this.size = def.batch.size;
    this.maxWaitMs = def.batch.maxWaitMs;
    this.slots = new Slots(deps.concurrency);
    const merging = this.maxWaitMs > 0 && this.size > 1;
    this.workerConcurrency = deps.concurrency + (merging ? Math.min(this.size, MERGE_SLOTS) : 0);
  }

  /** The BullMQ processor. */
  readonly process = async (job: Job, token?: string): Promise<unknown> => {
    const parsed = entriesOf(job);
    const unsubscribed = await this.deps.leaveForeign?.(
      job,
      parsed.entries.map((e) => e.channel),
    );
    if (unsubscribed) return unsubscribed;
    const attempt = attemptOf(job);
    // A transactional call decides in its transaction (ordered: also here, for the gate's turns).
    const done =
      this.deps.lookup && (!this.def.transactional || this.deps.gate)
        ? await this.deps.lookup.completedAmong(
            this.def.id,
            parsed.entries.map((e) => e.id),
          )
        : NONE;
    const entries = parsed.entries.filter((e) => !done.has(e.id));
    const gate = this.deps.gate;
    if (entries.length === 0) {
      await gate?.releaseAll(parsed.entries); // its run may have died before promoting
      return { skipped: 'already completed per the ledger' };
    }
    if (!gate) return this.runJob(job, entries, entries, attempt, parsed.replay);
    return runInTurn(gate, job, token, entries, (ready) =>
      this.runJob(job, ready, entries, attempt, parsed.replay),
    );
  };

  /**
   * Runs `ready` (the job's notifications whose turn has come; all of `entries` when the
   * consumer is not ordered) in a handler call; on failure retries, splits or dead-letters.
   */
  private async runJob(
    job: Job,
    ready: NotificationJobData[],
    entries: NotificationJobData[],
    attempt: number,
    isReplay: boolean,
  ): Promise<unknown> {
    try {
      await new Promise<void>((resolve, reject) => {
        const member: Member = {
          job,
          entries: ready,
          attempt,
          isReplay,
          settle: (error) => (error === undefined ? resolve() : reject(error)),
        };
        if (attempt === 1 && this.maxWaitMs > 0 && ready.length < this.size) this.gather(member);
        else void this.run([member]);
      });
      return { handled: ready.length };
    } catch (error) {
      return this.failed(job, entries, attempt, error);
    }
  }

  /** Adds a small first-attempt job to the open group; the group runs when full or when due. */
  private gather(member: Member): void {
    if (this.open && this.open.count + member.entries.length > this.size) this.flush();
    if (!this.open) {
      const timer = setTimeout(() => this.flush(), this.maxWaitMs);
      this.open = { members: [], count: 0, timer };
    }
    this.open.members.push(member);
    this.open.count += member.entries.length;
    // Full, or every extra slot is taken (no further job can arrive to fill it): run now.
    if (this.open.count >= this.size || this.open.members.length >= MERGE_SLOTS) this.flush();
  }

  private flush(): void {
    const group = this.open;
    if (!group) return;
    this.open = undefined;
    clearTimeout(group.timer);
    void this.run(group.members);
  }

  /** The handler's notifications of a group, payloads by reference read in one query. */
  private async notificationsOf(members: Member[]): Promise<Notification[]> {
    const all = members.flatMap((m) => m.entries);
    const loaded = await withPayloads(this.deps.db, this.deps.store.schema, all);
    let i = 0;
    return members.flatMap((m) =>
      m.entries.map(() => toNotification(loaded[i++], m.attempt, m.isReplay)),
    );
  }

  /** One handler call for `members` (at most `concurrency` at once); settles every member. */
  private async run(all: Member[]): Promise<void> {
    const releaseSlot = await this.slots.acquire();
    let members = all;
    const started = performance.now();
    let error: unknown;
    try {
      if (this.deps.lookup && !this.def.transactional) {
        members = await leaveOutCompleted(this.deps.lookup, this.def.id, members);
      }
      if (members.length > 0) {
        const notifications = await this.notificationsOf(members);
        // One span per handler call, linked to every notification's writer (consume/tracing.ts).
        const entries = members.flatMap((m) => m.entries);
        await traceBatchCall(this.def.id, entries, members[0].attempt, () =>
          callBatchHandler(this.def, this.deps, notifications, members[0].job),
        );
      }
    } catch (caught) {
      error = caught ?? new Error('batch handler threw a nullish value');
    }
    const seconds = (performance.now() - started) / 1000;
    if (error === undefined) {
      // The slot is given back once the outcomes are written: the next call of this process
      // asks the ledger again (leaveOutCompleted) and must see them.
      await Promise.all(
        members.map(async (m) => {
          this.deps.metrics?.observeJob(this.def.id, 'completed', seconds);
          // Ordered: the next of a key may start once this is in Postgres, so it is written now.
          const keep = this.deps.gate ? true : m.job.opts.removeOnComplete;
          // A transactional call committed its ledger rows with the handler's writes.
          if (!this.def.transactional) {
            await Promise.all(
              m.entries.map((e) => this.outcome(e, 'completed', m.attempt, null, keep)),
            );
          }
          m.settle(undefined);
        }),
      ).finally(releaseSlot);
      return;
    }
    releaseSlot();
    if (members.length === 1) {
      members[0].settle(error);
      return;
    }
    // A merged call failed: which job's notification was bad is unknown, so each job runs alone.
    this.deps.log.warn(
      { consumer: this.def.id, jobs: members.length, err: errorMessage(error) },
      'merged batch failed; handling its jobs one by one',
    );
    await Promise.all(members.map((m) => this.run([m])));
  }

  /** After a job's handler call failed: retry, split, or dead letter. */
  private async failed(
    job: Job,
    entries: NotificationJobData[],
    attempt: number,
    error: unknown,
  ): Promise<unknown> {
    const attempts = job.opts.attempts ?? 1;
    const final = isPermanent(error) || attempt >= attempts;
    const fields = {
      consumer: this.def.id,
      jobId: job.id,
      notificationIds: entries.length <= 10 ? entries.map((e) => e.id) : undefined,
      notifications: entries.length,
      attempt,
      err: errorMessage(error),
    };
    if (!final) {
      this.deps.metrics?.observeJob(this.def.id, 'retried', 0);
      this.deps.log.warn(fields, 'batch handler failed; will retry');
      throw error;
    }
    if (entries.length > 1) {
      // Split: every notification retried on its own, so one bad notification fails alone.
      const opts: JobsOptions = {
        attempts: job.opts.attempts,
        backoff: job.opts.backoff,
        removeOnComplete: job.opts.removeOnComplete,
        removeOnFail: job.opts.removeOnFail,
      };
      await this.deps.queue().addBulk(
        entries.map((e) => ({
          name: e.channel,
          data: e,
          opts: { ...opts, jobId: this.deps.jobIdFor(e.id) },
        })),
      );
      this.deps.log.warn(fields, 'batch failed for good; split into one job per notification');
      return { split: entries.length };
    }
    this.deps.metrics?.observeJob(this.def.id, 'failed', 0);
    this.deps.log.error(
      { ...fields, notificationId: entries[0].id, channel: entries[0].channel },
      'handler failed for good (job kept as failed)',
    );
    await this.outcome(
      entries[0],
      'failed',
      attempt,
      errorMessage(error).slice(0, 2000),
      this.deps.gate ? true : job.opts.removeOnFail,
    );
    if (this.deps.gate?.mode === 'skip') await this.deps.gate.release(entries[0]);
    throw error;
  }

  private outcome(
    e: NotificationJobData,
    status: 'completed' | 'failed',
    attempts: number,
    lastError: string | null,
    keep: unknown,
  ): Promise<void> | undefined {
    return this.deps.ledger?.write(
      { consumerId: this.def.id, notificationId: e.id, status, attempts, lastError },
      keep,
    );
  }
}
