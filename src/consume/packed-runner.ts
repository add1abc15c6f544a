import type { Job } from 'bullmq';
import type { PackedConsumerDefinition } from './consumers.js';
import type { BatchRunnerDeps } from './batch-deps.js';
import { attemptOf, entriesOf, isPermanent } from './job-data.js';
import { withPayloads } from './payload-refs.js';
import { toNotification, type Notification, type NotificationJobData } from './notification.js';
import { traceHandleCall } from './tracing.js';
import { exitJob, leftoverJob, ownJobsAmong } from './pack-exit.js';
import { PackReport } from './pack-report.js';
import { runByKey, type KeyedRun, type Leftover, type PackOutcome } from './packed-order.js';
import { fetchSlotsFor, type Slots } from './slots.js';
import { errorMessage } from '../util.js';
import type { RedisConnection } from '../redis.js';

const NONE: ReadonlySet<string> = new Set();

/** What a {@link PackedRunner} needs beyond a batch runner's dependencies. */
export interface PackedRunnerDeps extends BatchRunnerDeps {
  /** Aborted when the worker starts closing: notifications not started yet stay for later. */
  signal: AbortSignal;
  /** The connection of the consumer's queue (to look for jobs of the pack's notifications). */
  redis: RedisConnection;
  /** The processor of one-notification jobs (replays, leavers); takes a slot of {@link slots}. */
  single: (job: Job, token?: string) => Promise<unknown>;
  /** The consumer's handler slots (`concurrency`), shared by packs and single jobs. */
  slots: Slots;
}

/**
 * Runs a packed consumer's jobs (`batch` + plain `handle`; docs/performance.md, "Packed
 * delivery"): a job carries up to `batch.size` notifications (src/bridge/pack.ts), and `handle`
 * runs once per notification, up to `concurrency` at once across every job of the process.
 *
 * 1. One ledger lookup per pack (batched): what completed is left out, and what already has a
 *    job of its own (`n<id>`: it left this pack before), so nothing runs again.
 * 2. Payloads by reference are read in one query for the pack.
 * 3. Each notification: its own span, `ctx.signal` and timeout, transaction (transactional),
 *    ledger row (written before the pack completes), metrics and logs, as for a job of its own.
 * 4. A failure takes the notification out of the pack (src/consume/pack-exit.ts): a job of its own
 *    retried with backoff, or a dead letter; the others are not run again.
 * 5. Ordered (`gate`): only the notifications whose turn has come run, one after another per
 *    key (src/consume/packed-order.ts); the pack then waits in the delayed set for the rest.
 * 6. The return value names each notification's outcome; progress (percent) moves while it
 *    runs. A pack restarted as stalled, or whose worker is closing, hands what it had not
 *    finished out as jobs of their own (`n<id>`, attempts kept).
 */
export class PackedRunner {
  /**
   * BullMQ concurrency: a pack holds one; handler runs are bounded by the slots, so the lookups
   * of further packs overlap the running handlers.
   */
  readonly workerConcurrency: number;
  /** Notifications of packs running in this process now. */
  private readonly running = new Set<string>();

  constructor(
    private readonly def: PackedConsumerDefinition,
    private readonly deps: PackedRunnerDeps,
  ) {
    this.workerConcurrency = fetchSlotsFor(deps.concurrency);
  }

  /** The BullMQ processor. */
  readonly process = (job: Job, token?: string): Promise<unknown> => {
    const data = job.data as { batch?: unknown } | undefined;
    if (!Array.isArray(data?.batch)) return this.deps.single(job, token);
    return this.pack(job, token);
  };

  private async pack(job: Job, token: string | undefined): Promise<unknown> {
    const { entries, replay } = entriesOf(job);
    const unsubscribed = await this.deps.leaveForeign?.(
      job,
      entries.map((e) => e.channel),
    );
    if (unsubscribed) return unsubscribed;
    const report = new PackReport(job, entries);
    const attempt = attemptOf(job);
    // A transactional run decides in its transaction (ordered: also here, for the gate's turns).
    const done =
      this.deps.lookup && (!this.def.transactional || this.deps.gate)
        ? await this.deps.lookup.completedAmong(
            this.def.id,
            entries.map((e) => e.id),
          )
        : NONE;
    for (const id of done) report.set(id, 'skipped: already completed per the ledger');
    const open = entries.filter((e) => !done.has(e.id));
    const left = await ownJobsAmong(this.deps.redis, this.deps.queue(), open, this.deps.jobIdFor);
    for (const id of left) report.set(id, `left the pack as job ${this.deps.jobIdFor(id)}`);
    // Two packs holding one notification (rows packed twice) never run it at once here.
    const elsewhere = open.filter((e) => !left.has(e.id) && this.running.has(e.id));
    for (const e of elsewhere) report.set(e.id, 'skipped: running in another pack here');
    const todo = open.filter((e) => !left.has(e.id) && !this.running.has(e.id));
    for (const e of todo) this.running.add(e.id);
    try {
      return await this.runPack(job, token, todo, attempt, replay, report);
    } finally {
      for (const e of todo) this.running.delete(e.id);
    }
  }

  private async runPack(
    job: Job,
    token: string | undefined,
    todo: NotificationJobData[],
    attempt: number,
    replay: boolean,
    report: PackReport,
  ): Promise<unknown> {
    // Restarted by BullMQ after its worker died: what it had not finished leaves as jobs of
    // their own, each with BullMQ's stalled-job limit, so a notification that kills its process
    // fails alone instead of taking the pack with it.
    if (job.stalledCounter > 0) {
      await this.handOut(
        job,
        todo.map((entry) => ({ entry, why: 'the pack restarted' })),
        report,
      );
      return report.summary();
    }
    // Ordered: only the notifications whose turn has come run; the pack waits for the rest.
    const gate = this.deps.gate;
    const turn = gate ? await gate.admitPack(job, token, todo) : undefined;
    const ready = turn?.ready ?? todo;
    let run: KeyedRun;
    report.watch();
    try {
      const loaded = await withPayloads(this.deps.db, this.deps.store.schema, ready);
      const byEntry = new Map(ready.map((e, i) => [e, loaded[i]]));
      run = await runByKey(
        ready,
        (e) => this.one(job, e, byEntry.get(e) ?? e, attempt, replay, report),
        gate !== undefined,
        gate?.mode === 'skip',
      );
    } finally {
      report.unwatch();
      gate?.letGo(ready);
    }
    await this.handOut(job, run.leftovers, report);
    if (gate && turn) {
      await gate.releaseAll(run.finished);
      if (turn.waiting.length > 0) await gate.waitForRest(job, token, turn);
    }
    return report.summary();
  }

  /** Hands notifications of the pack out as jobs of their own (`n<id>`), in id order per key. */
  private async handOut(job: Job, leftovers: Leftover[], report: PackReport): Promise<void> {
    if (leftovers.length === 0) return;
    const jobs = leftovers.map((l) => leftoverJob(job, l.entry, this.deps.jobIdFor(l.entry.id)));
    await this.deps.queue().addBulk(jobs);
    for (const l of leftovers) {
      report.set(l.entry.id, `${l.why}: handed out as job ${this.deps.jobIdFor(l.entry.id)}`);
    }
    this.deps.log.info(
      { consumer: this.def.id, jobId: job.id, notifications: leftovers.length },
      `${leftovers[0].why}: notifications of the pack continue as jobs of their own`,
    );
  }

  /** One notification of a pack: its handler run, then its outcome. */
  private async one(
    job: Job,
    entry: NotificationJobData,
    loaded: NotificationJobData,
    attempt: number,
    replay: boolean,
    report: PackReport,
  ): Promise<PackOutcome> {
    const release = await this.deps.slots.acquire();
    if (this.deps.signal.aborted) {
      release();
      return 'not started';
    }
    const started = performance.now();
    let ran: boolean;
    try {
      const n = toNotification(loaded, attempt, replay);
      ran = await traceHandleCall(this.def.id, entry, attempt, () => this.call(n, job), job.id);
    } catch (error) {
      release();
      const final = await this.failed(job, entry, attempt, started, error, report);
      return final ? 'dead letter' : 'retrying';
    }
    release();
    if (ran) await this.completed(entry, attempt, started, report);
    else report.set(entry.id, 'skipped: already completed per the ledger');
    return 'done';
  }

  /** `handle(n, job, ctx)` under the consumer's timeout; transactional: in its own transaction. */
  private async call(n: Notification, job: Job): Promise<boolean> {
    const def = this.def;
    const options = {
      timeoutMs: def.timeout,
      what: `handler of ${def.id}`,
      onTimeout: () =>
        this.deps.log.warn(
          { notificationId: n.id, consumer: def.id, jobId: job.id, timeoutMs: def.timeout },
          'handler timed out; its signal is aborted and the retry waits until it settles',
        ),
    };
    if (!def.transactional) {
      // The pack's lookup may predate the completion by a twin pack (its rows packed twice).
      if (await this.deps.lookup?.isCompleted(def.id, n.id)) return false;
      await this.deps.attempts.run((ctx) => def.handle(n, job, ctx), options);
      return true;
    }
    if (!this.deps.transactions) throw new Error(`no transaction pool for ${def.id}`);
    const outcome = await this.deps.transactions.run(def.id, [n.id], n.attempt, def.timeout, (db) =>
      this.deps.attempts.run(({ signal }) => def.handle(n, job, { signal, db }), options),
    );
    return outcome.ran;
  }

  private async completed(
    entry: NotificationJobData,
    attempt: number,
    started: number,
    report: PackReport,
  ): Promise<void> {
    const seconds = (performance.now() - started) / 1000;
    // A transactional run committed its ledger row with the handler's writes. Otherwise the row
    // is written before the pack can complete: until then only the ledger knows it ran.
    if (!this.def.transactional) {
      await this.deps.ledger?.write(
        {
          consumerId: this.def.id,
          notificationId: entry.id,
          status: 'completed',
          attempts: attempt,
          lastError: null,
        },
        true,
      );
    }
    report.set(entry.id, 'completed');
    this.deps.metrics?.observeJob(this.def.id, 'completed', seconds);
    if (this.deps.log.isLevelEnabled('debug')) {
      this.deps.log.debug(
        {
          notificationId: entry.id,
          channel: entry.channel,
          consumer: this.def.id,
          attempt,
          ms: Math.round(seconds * 1000),
        },
        'handled',
      );
    }
  }

  /** A failed run: the notification leaves the pack, to be retried alone or as a dead letter. */
  private async failed(
    job: Job,
    entry: NotificationJobData,
    attempt: number,
    started: number,
    error: unknown,
    report: PackReport,
  ): Promise<boolean> {
    const final = isPermanent(error) || attempt >= (job.opts.attempts ?? 1);
    const seconds = (performance.now() - started) / 1000;
    this.deps.metrics?.observeJob(this.def.id, final ? 'failed' : 'retried', seconds);
    const jobId = this.deps.jobIdFor(entry.id);
    const message = errorMessage(error);
    const fields = {
      notificationId: entry.id,
      channel: entry.channel,
      consumer: this.def.id,
      attempt,
      err: message,
      jobId,
      packJobId: job.id,
    };
    // Its own job first: a restart of the pack finds it and leaves the notification to it.
    const exit = exitJob(job, entry, jobId, attempt, error, final);
    await this.deps.queue().add(exit.name, exit.data, exit.opts);
    if (!final) {
      this.deps.log.warn(fields, 'handler failed; will retry');
      report.set(entry.id, `failed (attempt ${attempt}: ${message}); retried as job ${jobId}`);
      return false;
    }
    this.deps.log.error(fields, 'handler failed for good (job kept as failed)');
    await this.deps.ledger?.write(
      {
        consumerId: this.def.id,
        notificationId: entry.id,
        status: 'failed',
        attempts: attempt,
        lastError: message.slice(0, 2000),
      },
      true,
    );
    report.set(entry.id, `failed for good (attempt ${attempt}: ${message}); dead letter ${jobId}`);
    return true;
  }
}
