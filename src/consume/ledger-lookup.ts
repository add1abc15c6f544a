import type { Queryable, Store } from '../db/store.js';
import { redactSecrets, type Logger } from '../log.js';
import { errorMessage } from '../util.js';

/** One caller waiting for the answer about some notifications of one consumer. */
interface Waiter {
  resolve: (completed: ReadonlySet<string>) => void;
  reject: (error: unknown) => void;
}

/** The lookups of one consumer: what waits for the next query, and whether one is in flight. */
interface Lane {
  consumerId: string;
  ids: Set<string>;
  waiters: Waiter[];
  /** Queries of this lane in flight (at most {@link IN_FLIGHT}). */
  inFlight: number;
  /** A send is scheduled for the end of this tick. */
  scheduled: boolean;
  failures: number;
  timer: NodeJS.Timeout | undefined;
}

/**
 * Queries one consumer may have in flight. Two, not one: with one, a question asked just after a
 * query left waits for that query and then its own (two round trips); with two it leaves at the
 * end of its tick. Measured in bench/drain.ts (docs/performance.md).
 */
const IN_FLIGHT = 1;

/** A notification id as the bridge writes it: a positive bigint in decimal. */
const NOTIFICATION_ID = /^[1-9][0-9]{0,18}$/;

/** Error of the lookups still waiting when the worker closes. */
export class LookupClosedError extends Error {
  constructor() {
    super('the worker is closing: the ledger lookup was abandoned');
    this.name = 'LookupClosedError';
  }
}

/**
 * Asks the delivery ledger "did this consumer already complete these notifications?" for every
 * attempt a worker starts, batched: the questions of one consumer asked within the same tick, or
 * while two of its queries are in flight, go to Postgres as one `= ANY($ids)` query on the
 * deliveries primary key (`Store.completedAmong`). So an idle worker answers after one round
 * trip, and a busy one sends at most two queries per round trip however many jobs start meanwhile (the
 * group commit of {@link LedgerWriter}, applied to reads).
 *
 * Why every attempt: BullMQ's job id dedupes only while the job exists. A job removed on
 * completion and added again (a listener that lost its COMMIT after `addBulk`, `reconcile
 * --verify` racing a worker, a batch re-packed differently) is a brand-new job to BullMQ; only
 * the ledger knows it already ran.
 *
 * While Postgres is unreachable the questions wait (the query is retried with backoff) rather
 * than fail: a failed attempt would spend one of the job's `attempts` on an outage, and running
 * the handler without an answer would break the guarantee.
 */
export class CompletedLookup {
  private readonly lanes = new Map<string, Lane>();
  private closed = false;

  constructor(
    private readonly store: Store,
    private readonly db: Queryable,
    private readonly log: Logger,
    private readonly retryMs = { min: 200, max: 5000 },
  ) {}

  /** The ids among `ids` that `consumerId` completed, per the ledger. */
  completedAmong(consumerId: string, ids: readonly string[]): Promise<ReadonlySet<string>> {
    if (this.closed) return Promise.reject(new LookupClosedError());
    if (ids.length === 0) return Promise.resolve(new Set());
    // A malformed id (a job added by hand) would fail the shared query of every job asking
    // alongside it, retried for ever: refuse it alone.
    const bad = ids.find((id) => !NOTIFICATION_ID.test(id));
    if (bad !== undefined) {
      return Promise.reject(new Error(`not a notification id: ${JSON.stringify(bad)}`));
    }
    const lane = this.laneOf(consumerId);
    for (const id of ids) lane.ids.add(id);
    return new Promise((resolve, reject) => {
      lane.waiters.push({ resolve, reject });
      // First question of the tick: ask once the tick's other jobs have asked theirs too.
      if (!lane.scheduled && lane.inFlight < IN_FLIGHT && lane.timer === undefined) {
        lane.scheduled = true;
        setImmediate(() => {
          lane.scheduled = false;
          this.send(lane);
        });
      }
    });
  }

  /** Whether `consumerId` completed `notificationId`, per the ledger. */
  async isCompleted(consumerId: string, notificationId: string): Promise<boolean> {
    return (await this.completedAmong(consumerId, [notificationId])).has(notificationId);
  }

  /** Rejects every waiting lookup (their jobs fail this attempt and are retried). */
  close(): void {
    this.closed = true;
    for (const lane of this.lanes.values()) {
      clearTimeout(lane.timer);
      lane.timer = undefined;
      const waiters = lane.waiters.splice(0);
      lane.ids.clear();
      for (const w of waiters) w.reject(new LookupClosedError());
    }
  }

  private laneOf(consumerId: string): Lane {
    let lane = this.lanes.get(consumerId);
    if (!lane) {
      lane = {
        consumerId,
        ids: new Set(),
        waiters: [],
        inFlight: 0,
        scheduled: false,
        failures: 0,
        timer: undefined,
      };
      this.lanes.set(consumerId, lane);
    }
    return lane;
  }

  private send(lane: Lane): void {
    if (lane.inFlight >= IN_FLIGHT || lane.waiters.length === 0 || this.closed) return;
    const waiters = lane.waiters.splice(0);
    const ids = [...lane.ids];
    lane.ids.clear();
    lane.inFlight++;
    this.store.completedAmong(this.db, lane.consumerId, ids).then(
      (completed) => {
        lane.inFlight--;
        if (lane.failures > 0) {
          this.log.info({ consumer: lane.consumerId }, 'ledger lookups work again');
          lane.failures = 0;
        }
        for (const w of waiters) w.resolve(completed);
        // Questions asked while this query was in flight: one query for all of them, now.
        this.send(lane);
      },
      (error: unknown) => {
        lane.inFlight--;
        lane.failures++;
        if (lane.failures === 1 || lane.failures % 10 === 0) {
          this.log.warn(
            {
              consumer: lane.consumerId,
              err: redactSecrets(errorMessage(error)),
              failures: lane.failures,
            },
            'ledger lookup failed; jobs wait for it (retrying)',
          );
        }
        if (this.closed) {
          for (const w of waiters) w.reject(new LookupClosedError());
          return;
        }
        // Back in line, ahead of later questions; asked again after a backoff.
        for (const id of ids) lane.ids.add(id);
        lane.waiters.unshift(...waiters);
        const delay = Math.min(this.retryMs.max, this.retryMs.min * 2 ** (lane.failures - 1));
        if (lane.timer !== undefined) return; // the other query in flight failed too
        lane.timer = setTimeout(() => {
          lane.timer = undefined;
          this.send(lane);
        }, delay);
      },
    );
  }
}
