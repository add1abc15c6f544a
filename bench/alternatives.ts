/**
 * The Postgres-only alternatives, draining the same backlog with the same no-op handler, each in
 * the fastest mode its documentation recommends:
 *
 * - graphile-worker 0.17: the settings of its performance page (`concurrentJobs: 24`,
 *   `maxPoolSize: 25`, `localQueue: { size: 500 }`, `completeJobBatchDelay: 0`,
 *   `failJobBatchDelay: 0`), one job per notification.
 * - pg-boss 10: `work()` with `batchSize` (the handler gets an array of jobs), several workers
 *   (one per `work()` call), `pollingIntervalSeconds` at its minimum of 0.5. pg-boss 10 waits
 *   out the rest of the polling interval after every fetch, so its throughput is about
 *   workers × batchSize / 0.5 s until Postgres saturates: the bench gives it the batch size and
 *   handler count of the pgq-bridge batch consumer it is compared with.
 *
 * Jobs are inserted before the clock starts (bulk APIs: `addJobs`, `insert`); the clock runs
 * from the worker's start until the last handler call. Each runs in this process, like the
 * pgq-bridge and raw BullMQ sides of bench/drain.ts.
 */
import { createRequire } from 'node:module';
import { Logger, makeWorkerUtils, run, runMigrations } from 'graphile-worker';
import PgBoss from 'pg-boss';
import { DATABASE_URL, benchPool, dropSchemas, round } from './lib/common.js';

/** Throughput of one drain. */
export interface DrainFigure {
  count: number;
  ms: number;
  perSecond: number;
}

const GRAPHILE_SCHEMA = 'pgqbench_graphile';
const PGBOSS_SCHEMA = 'pgqbench_pgboss';
/** The schemas {@link alternativeEnqueueSql} installs. */
export const ALTERNATIVE_SCHEMAS = [GRAPHILE_SCHEMA, PGBOSS_SCHEMA];

/** pg-boss's shortest polling interval (its documented minimum). */
const PGBOSS_POLLING_SECONDS = 0.5;
/** graphile-worker settings used by {@link drainGraphile} (its performance page). */
export const GRAPHILE_SETTINGS = {
  concurrentJobs: 24,
  maxPoolSize: 25,
  localQueue: { size: 500 },
  completeJobBatchDelay: 0,
  failJobBatchDelay: 0,
};

function figure(count: number, ms: number): DrainFigure {
  return { count, ms: round(ms), perSecond: round((count / ms) * 1000) };
}

function counter(count: number): { add: (n: number) => void; done: Promise<void> } {
  let left = count;
  let resolve!: () => void;
  const done = new Promise<void>((r) => (resolve = r));
  return {
    add: (n) => {
      left -= n;
      if (left <= 0) resolve();
    },
    done,
  };
}

const silent = new Logger(() => () => undefined);
/** Where and how graphile-worker's utilities connect. */
const GRAPHILE_CONNECTION = {
  connectionString: DATABASE_URL,
  schema: GRAPHILE_SCHEMA,
  logger: silent,
};

/** graphile-worker: `count` stored jobs → all handlers done. */
export async function drainGraphile(count: number): Promise<DrainFigure> {
  const db = benchPool(2);
  try {
    await dropSchemas(db, GRAPHILE_SCHEMA);
    await runMigrations(GRAPHILE_CONNECTION);
    const utils = await makeWorkerUtils(GRAPHILE_CONNECTION);
    try {
      for (let from = 0; from < count; from += 5000) {
        const specs = [];
        for (let i = from; i < Math.min(count, from + 5000); i++) {
          specs.push({ identifier: 'bench', payload: { i } });
        }
        await utils.addJobs(specs);
      }
    } finally {
      await utils.release();
    }
    await db.query(`VACUUM ANALYZE ${GRAPHILE_SCHEMA}._private_jobs`).catch(() => undefined);
    const finished = counter(count);
    const started = performance.now();
    const runner = await run({
      connectionString: DATABASE_URL,
      schema: GRAPHILE_SCHEMA,
      concurrency: GRAPHILE_SETTINGS.concurrentJobs,
      noHandleSignals: true,
      logger: silent,
      taskList: { bench: async () => finished.add(1) },
      preset: {
        worker: {
          maxPoolSize: GRAPHILE_SETTINGS.maxPoolSize,
          localQueue: GRAPHILE_SETTINGS.localQueue,
          completeJobBatchDelay: GRAPHILE_SETTINGS.completeJobBatchDelay,
          failJobBatchDelay: GRAPHILE_SETTINGS.failJobBatchDelay,
        },
      },
    });
    await finished.done;
    const ms = performance.now() - started;
    await runner.stop();
    return figure(count, ms);
  } finally {
    await dropSchemas(db, GRAPHILE_SCHEMA).catch(() => undefined);
    await db.end();
  }
}

/** pg-boss: `count` stored jobs → all handlers done (batch handlers). */
export async function drainPgBoss(
  count: number,
  settings: { batchSize: number; workers: number },
): Promise<DrainFigure> {
  const db = benchPool(2);
  const boss = new PgBoss({
    connectionString: DATABASE_URL,
    schema: PGBOSS_SCHEMA,
    supervise: false,
    schedule: false,
    max: settings.workers + 2,
  });
  boss.on('error', () => undefined);
  try {
    await dropSchemas(db, PGBOSS_SCHEMA);
    await boss.start();
    await boss.createQueue('bench');
    for (let from = 0; from < count; from += 5000) {
      const jobs = [];
      for (let i = from; i < Math.min(count, from + 5000); i++) {
        jobs.push({ name: 'bench', data: { i } });
      }
      await boss.insert(jobs);
    }
    await db.query(`VACUUM ANALYZE ${PGBOSS_SCHEMA}.job`).catch(() => undefined);
    const finished = counter(count);
    const started = performance.now();
    for (let w = 0; w < settings.workers; w++) {
      await boss.work(
        'bench',
        {
          batchSize: settings.batchSize,
          pollingIntervalSeconds: PGBOSS_POLLING_SECONDS,
        },
        async (jobs) => finished.add(jobs.length),
      );
    }
    await finished.done;
    const ms = performance.now() - started;
    await boss.offWork('bench');
    return figure(count, ms);
  } finally {
    await boss.stop({ graceful: false, wait: true }).catch(() => undefined);
    await dropSchemas(db, PGBOSS_SCHEMA).catch(() => undefined);
    await db.end();
  }
}

/**
 * What enqueueing one job costs inside the caller's transaction with each alternative: one SQL
 * statement per system, for pgbench (simple protocol, so values are literals).
 *
 * - graphile-worker: `add_job(identifier, payload)`, its documented SQL API (it sends a NOTIFY
 *   with a random payload on every call, so writers take the commit-time NOTIFY lock).
 * - pg-boss: the `INSERT` its `send()` runs (pg-boss's own statement, from its plans module), with
 *   every option left to its default; `send()` itself also takes a round trip from Node first.
 *
 * Installs both schemas ({@link ALTERNATIVE_SCHEMAS}: the caller drops them when done).
 */
export async function alternativeEnqueueSql(
  queue: string,
  payloadJson: string,
): Promise<{ graphileWorker: string; pgBoss: string }> {
  const db = benchPool(2);
  try {
    await dropSchemas(db, ...ALTERNATIVE_SCHEMAS);
    await runMigrations(GRAPHILE_CONNECTION);
    const boss = new PgBoss({
      connectionString: DATABASE_URL,
      schema: PGBOSS_SCHEMA,
      supervise: false,
      schedule: false,
    });
    boss.on('error', () => undefined);
    await boss.start();
    await boss.createQueue(queue);
    await boss.stop({ graceful: false, wait: true });
  } finally {
    await db.end();
  }
  const literal = (text: string): string => `'${text.replaceAll("'", "''")}'`;
  const plans = createRequire(import.meta.url)('pg-boss/src/plans.js') as {
    insertJob: (schema: string) => string;
  };
  // $2 is the queue name, $3 the data; every other parameter NULL (the defaults send() applies).
  const values: Record<string, string> = { 2: literal(queue), 3: literal(payloadJson) };
  const pgBoss = plans
    .insertJob(PGBOSS_SCHEMA)
    .replace(/\$(\d+)/g, (_, n: string) => values[n] ?? 'NULL')
    .replace(/\s+/g, ' ')
    .trim();
  return {
    graphileWorker: `SELECT ${GRAPHILE_SCHEMA}.add_job(${literal(queue)}, ${literal(payloadJson)}::json)`,
    pgBoss,
  };
}
