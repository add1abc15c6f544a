/**
 * The soak's consumers, on 3 plain channels (orders, users, payments) and 2 keyed ones (accounts:
 * `notify(..., key)`; rows: a `pgq-bridge triggers add` trigger):
 *
 * - audit (all plain channels), mailer (packed and transactional: `batch` with a plain
 *   `handle`, sometimes a transient failure), search (concurrency 20: two BullMQ Workers per process),
 *   billing (`removeOnComplete: true`: a job re-added after its twin completed is a fresh job
 *   that only the ledger can stop), projection (transactional, `removeOnComplete: true`);
 * - slowpoke (payments): `timeout: 400` and a handler that sometimes runs far longer, half of
 *   those ignoring `ctx.signal` (the retry must not overlap the run that outlived its timeout);
 * - sequencer (accounts, rows): `ordered: true`, with a `timeout` and sometimes an overrun or a
 *   transient failure (per key: one at a time, in commit order, none missing);
 * - batcher (accounts, rows): `ordered: true` with `batch` and `handleBatch` (a run per
 *   notification of the batch), sometimes a transient failure of the whole batch;
 * - rollout (orders; later versions add users): the consumer the rolling deploys change.
 *
 * Each handler first records its run in `<soak schema>.handled` (the Postgres the chaos restarts,
 * reached through the same proxy as the bridge): start time, then, when it is done, its end time
 * (also when it gave up on an aborted signal or threw), so that the verifier can check that runs
 * never overlap. A failed record (Postgres down or cut) throws: BullMQ retries it, generously
 * enough (25 attempts, ~1 s apart) that no outage dead-letters a job.
 */

/** The plain channels the writers use. */
export const CHANNELS = ['orders', 'users', 'payments'] as const;

/** The keyed channels: `accounts` (notify with a key), `rows` (trigger on soak.rows). */
export const KEYED_CHANNELS = { notify: 'accounts', trigger: 'rows' } as const;

/** Consumer id → channels. */
export const CONSUMERS: Record<string, readonly string[]> = {
  audit: ['orders', 'users', 'payments'],
  mailer: ['users'],
  billing: ['orders', 'payments'],
  search: ['orders', 'users'],
  projection: ['orders', 'payments'],
  slowpoke: ['payments'],
  sequencer: [KEYED_CHANNELS.notify, KEYED_CHANNELS.trigger],
  batcher: [KEYED_CHANNELS.notify, KEYED_CHANNELS.trigger],
  rollout: ['orders'],
};

/**
 * The consumer the rolling deploys change (test/soak/deploy.ts): version v1 lists `orders`, every
 * later version (v2, v3, ...) lists `orders` and {@link ROLLOUT_ADDED} too.
 */
export const ROLLOUT = 'rollout';
export const ROLLOUT_ADDED = 'users';

/** A version of the consumers file: its name and the channels the rollout consumer lists. */
export interface CodeVersion {
  code: string;
  rolloutChannels: readonly string[];
  /** The rollout consumer's attempts: versions with the same channels differ in their options. */
  rolloutAttempts: number;
}

/** The first version. */
export const FIRST_VERSION: CodeVersion = {
  code: 'v1',
  rolloutChannels: CONSUMERS[ROLLOUT],
  rolloutAttempts: 25,
};

/**
 * Transactional consumers (`transactional: true`): their handler records the handling through
 * `ctx.db`, inside the attempt's transaction, so the `handled` row is the effect that must commit
 * exactly once per notification (test/soak/verify.ts checks it: no duplicate at all).
 */
export const TRANSACTIONAL: readonly string[] = ['projection', 'mailer'];

/** Ordered consumers (`ordered: true`): the verifier checks them per key. */
export const ORDERED: readonly string[] = ['sequencer', 'batcher'];

/** Consumers with a `timeout` whose handler sometimes outlives it. */
export const TIMED: Record<string, number> = { slowpoke: 400, sequencer: 1500 };

/** Per consumer: the definition's extra options and its handler's body (as source text). */
const SPECS: Record<string, { options: string; body: string }> = {
  audit: { options: '', body: 'await run("audit", n)' },
  mailer: {
    // Packed: batch with a plain handle (a run per notification, each its own attempts), and
    // transactional: a non-transactional packed consumer can run a notification that a lost
    // COMMIT re-packed into two jobs in two processes at once (README, Guarantees: the one
    // overlap left); a transactional one waits on the first run's ledger row instead.
    options: 'transactional: true, batch: { size: 20, maxWaitMs: 20 },',
    body: 'await run("mailer", n, { db: ctx.db, failFirst: 0.02 })',
  },
  billing: { options: 'removeOnComplete: true,', body: 'await run("billing", n)' },
  search: { options: 'concurrency: 20,', body: 'await run("search", n)' },
  projection: {
    options: 'transactional: true, removeOnComplete: true,',
    body: 'await run("projection", n, { db: ctx.db })',
  },
  slowpoke: {
    options: `timeout: ${TIMED.slowpoke},`,
    // 4% of the runs take 0.7-1.5 s: half of them ignore the signal, half give up when it aborts.
    body: `await run("slowpoke", n, { signal: ctx.signal, slow: Math.random() < 0.04 ? 700 + Math.random() * 800 : 0 })`,
  },
  rollout: { options: '', body: 'await run("rollout", n)' },
  batcher: {
    options: 'ordered: true, concurrency: 4, batch: { size: 10, maxWaitMs: 20 },',
    // 3% of the batch attempts fail once (the whole batch is retried, its keys held).
    body: 'await runBatch("batcher", ns, { failFirst: 0.03 })',
  },
  sequencer: {
    options: `ordered: true, concurrency: 8, timeout: ${TIMED.sequencer},`,
    // 1% overrun the timeout (2-3 s), 2% fail once (a retry with backoff holds the key).
    body: `await run("sequencer", n, { signal: ctx.signal, slow: Math.random() < 0.01 ? 2000 + Math.random() * 1000 : 0, failFirst: 0.02 })`,
  },
};

/** The text of the consumers file (`.mjs`) of `version`, for a soak schema named `soakSchema`. */
export function consumersFile(soakSchema: string, version: CodeVersion = FIRST_VERSION): string {
  const defs = Object.entries(CONSUMERS)
    .map(([id, listed]) => {
      const channels = id === ROLLOUT ? version.rolloutChannels : listed;
      const options = id === ROLLOUT ? `attempts: ${version.rolloutAttempts},` : SPECS[id].options;
      const handler = id === 'batcher' ? 'handleBatch(ns, job, ctx)' : 'handle(n, job, ctx)';
      return `  defineConsumer({ id: ${JSON.stringify(id)}, channels: ${JSON.stringify(channels)}, ...common, ${options}
    async ${handler} { ${SPECS[id].body}; } }),`;
    })
    .join('\n');
  return `// Generated by test/soak/consumers.ts: version ${version.code}.
import pg from 'pg';
import { defineConsumer } from 'pgq-bridge';

const pool = new pg.Pool({
  connectionString: process.env.DATABASE_URL,
  max: 16,
  connectionTimeoutMillis: 5000,
  // A write whose answer never comes (a cut path) fails the attempt; BullMQ retries it.
  query_timeout: 20000,
  application_name: 'soak handler',
});
// Idle clients die with every Postgres restart; that must not crash the worker.
pool.on('error', () => {});

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

// The version a keyed notification carries: payload.version (accounts) or the row's new version.
function versionOf(n) {
  const v = n.change ? n.change.new?.version : n.payload?.version;
  return typeof v === 'number' ? v : null;
}

// One handler run: record its start (through db: the attempt's transaction client of a
// transactional consumer, else the pool), work, record its end. slow: ms to work instead of a few;
// with a signal, every other slow run gives up when the signal aborts (a timeout), the others
// ignore it. failFirst: the probability that a first attempt fails after its work. Every call has
// an id of its own (call_id), so that its end is recorded even when the start's answer was lost
// (a cut path after the INSERT committed).
async function run(consumer, n, { db = pool, signal, slow = 0, failFirst = 0 } = {}) {
  const call = newCallId();
  let outcome = 'failed';
  try {
    await db.query(
      'INSERT INTO "${soakSchema}".handled (consumer, notification_id, attempt, is_replay, pid, key, version, slow, channel, code, call_id) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)',
      [consumer, n.id, n.attempt, n.isReplay, process.pid, n.key ?? null, versionOf(n), slow > 0, n.channel, ${JSON.stringify(version.code)}, call],
    );
    if (slow > 0 && signal && Math.random() < 0.5) {
      await new Promise((resolve, reject) => {
        const timer = setTimeout(resolve, slow);
        signal.addEventListener('abort', () => { clearTimeout(timer); reject(new Error('aborted by ctx.signal')); }, { once: true });
      });
    } else {
      await sleep(slow > 0 ? slow : Math.floor(Math.random() * 10));
    }
    if (failFirst > 0 && n.attempt === 1 && Math.random() < failFirst) {
      outcome = 'thrown';
      throw new Error('soak: transient failure');
    }
    outcome = 'ok';
  } finally {
    await ended(db, call, outcome);
  }
}

// One batch attempt: a run per notification in it (one start, one end for all of them, one
// call_id, which is also its batch_run; pos: the place in the batch).
async function runBatch(consumer, ns, { failFirst = 0 } = {}) {
  const call = newCallId();
  let outcome = 'failed';
  try {
    await pool.query(
      'INSERT INTO "${soakSchema}".handled (consumer, notification_id, attempt, is_replay, pid, key, version, slow, channel, code, call_id, batch_run, pos) SELECT $1, u.id, u.attempt, u.replay, $2, u.key, u.version, false, u.channel, $3, $10, $10, u.pos FROM unnest($4::bigint[], $5::int[], $6::boolean[], $7::text[], $8::int[], $9::text[]) WITH ORDINALITY AS u(id, attempt, replay, key, version, channel, pos)',
      [consumer, process.pid, ${JSON.stringify(version.code)}, ns.map((n) => n.id), ns.map((n) => n.attempt), ns.map((n) => n.isReplay),
       ns.map((n) => n.key ?? null), ns.map(versionOf), ns.map((n) => n.channel), call],
    );
    await sleep(5 + Math.floor(Math.random() * 15));
    if (failFirst > 0 && ns[0].attempt === 1 && Math.random() < failFirst) {
      outcome = 'thrown';
      throw new Error('soak: transient batch failure');
    }
    outcome = 'ok';
  } finally {
    await ended(pool, call, outcome);
  }
}

const newCallId = () => Math.floor(Math.random() * 2 ** 52);

// Records the end of the runs of call and how they ended (ok; thrown on purpose; failed: aborted
// by the signal or an error). In a transaction (a transactional consumer) at once, with the
// effect; else the end time is taken now (Date.now(): whole ms, so up to 1 ms before the true end;
// rounding up would make a run that starts within that ms look overlapping) and written with
// others every 50 ms, retried while Postgres is away: one statement for many runs. A process that exits first leaves its runs' ends to its exit time (test/soak/verify.ts).
async function ended(db, call, outcome) {
  if (db !== pool) {
    await db.query('UPDATE "${soakSchema}".handled SET ended_at = clock_timestamp(), outcome = $2 WHERE call_id = $1', [call, outcome]);
    return;
  }
  pendingEnds.push({ call, at: Date.now(), outcome });
}

const pendingEnds = [];
let flushing = false;
setInterval(async () => {
  if (flushing || pendingEnds.length === 0) return;
  flushing = true;
  const batch = pendingEnds.splice(0, 5000);
  try {
    await pool.query(
      'UPDATE "${soakSchema}".handled h SET ended_at = to_timestamp(u.at / 1000.0), outcome = u.outcome FROM unnest($1::bigint[], $2::float8[], $3::text[]) AS u(call, at, outcome) WHERE h.call_id = u.call',
      [batch.map((e) => e.call), batch.map((e) => e.at), batch.map((e) => e.outcome)],
    );
  } catch {
    pendingEnds.unshift(...batch);
  } finally {
    flushing = false;
  }
}, 50).unref();

const common = {
  concurrency: 4,
  attempts: 25,
  backoff: { type: 'fixed', delay: 1000, jitter: 0.5 },
  startFrom: 'beginning',
};

export default [
${defs}
];
`;
}
