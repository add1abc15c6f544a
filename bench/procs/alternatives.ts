/**
 * Bench child: everything the benchmarks do with the Postgres-only alternatives, at their newest
 * versions (graphile-worker 0.18, pg-boss 12), which need Node 22 or newer: bench/alternatives.ts
 * forks this file with a Node 24 binary (bench/lib/node24.ts) while the pgq-bridge side runs on
 * the machine's Node. Each message is answered by one reply of the same `type` (or `error`).
 *
 * - `{ type: 'hello' }` → `{ node }`, the Node version this child runs on.
 * - `{ type: 'drain', system, schema, count, batchSize?, workers? }` → `{ ms, perSecond }`: jobs
 *   inserted with the bulk API (not timed), then the clock runs from the worker's start until the
 *   last no-op handler call. graphile-worker runs with the settings of its performance page,
 *   pg-boss with `batchSize` and `localConcurrency` (its documented throughput settings).
 * - `{ type: 'install', system, schema, queue, notify? }` → `{}`: a fresh schema with the queue
 *   (pg-boss: `notify` turns on the queue's LISTEN/NOTIFY wake-up; default off, as in pg-boss).
 * - `{ type: 'enqueue-sql', system, schema, queue, payload? }` → `{ sql }`: the one statement the
 *   system runs to enqueue a job in the caller's transaction: graphile-worker's `add_job()`, or
 *   the `INSERT` pg-boss's `send()` runs (its own SQL, from its plans module; with the queue's
 *   NOTIFY when the queue has `notify`). With `payload` the job's data is a literal (for pgbench);
 *   without, `$1` is the data (`{...}` for graphile-worker, `[{"data": {...}}]` for pg-boss) and
 *   the statement returns the job's `id`.
 * - `{ type: 'stream-start', system, schema, queue }` → `{}`: a worker whose handler records when
 *   each job started (wall time); then `progress` → `{ handled }`, `collect` → `{ ids, starts }`
 *   (job ids, as the writer's statement returned them), `stop` → `{}` and exit.
 */
import { createRequire } from 'node:module';
import { Logger, makeWorkerUtils, run, runMigrations, type Runner } from 'graphile-worker';
import { PgBoss } from 'pg-boss';
import { DATABASE_URL, benchPool, dropSchemas, round, wallMs } from '../lib/common.js';
import { GRAPHILE_SETTINGS, PGBOSS_STREAM } from '../lib/alternative-settings.js';

type System = 'graphile-worker' | 'pg-boss';

/** pg-boss's shortest polling interval (its documented minimum). */
const PGBOSS_POLLING_SECONDS = 0.5;

const silent = new Logger(() => () => undefined);

function graphileConnection(schema: string) {
  return { connectionString: DATABASE_URL, schema, logger: silent };
}

function graphileRun(schema: string, task: (id: string) => void): Promise<Runner> {
  return run({
    connectionString: DATABASE_URL,
    schema,
    concurrency: GRAPHILE_SETTINGS.concurrentJobs,
    noHandleSignals: true,
    logger: silent,
    taskList: {
      bench: async (_payload, helpers) => task(helpers.job.id),
    },
    preset: {
      worker: {
        maxPoolSize: GRAPHILE_SETTINGS.maxPoolSize,
        localQueue: GRAPHILE_SETTINGS.localQueue,
        completeJobBatchDelay: GRAPHILE_SETTINGS.completeJobBatchDelay,
        failJobBatchDelay: GRAPHILE_SETTINGS.failJobBatchDelay,
      },
    },
  });
}

function newBoss(schema: string, max: number, listen = false): PgBoss {
  const boss = new PgBoss({
    connectionString: DATABASE_URL,
    schema,
    supervise: false,
    schedule: false,
    max,
    ...(listen ? { useListenNotify: true } : {}),
  });
  boss.on('error', () => undefined);
  boss.on('warning', () => undefined);
  return boss;
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

async function drainGraphile(schema: string, count: number): Promise<number> {
  const db = benchPool(2);
  try {
    await dropSchemas(db, schema);
    await runMigrations(graphileConnection(schema));
    const utils = await makeWorkerUtils(graphileConnection(schema));
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
    await db.query(`VACUUM ANALYZE ${schema}._private_jobs`).catch(() => undefined);
    const finished = counter(count);
    const started = performance.now();
    const runner = await graphileRun(schema, () => finished.add(1));
    await finished.done;
    const ms = performance.now() - started;
    await runner.stop();
    return ms;
  } finally {
    await dropSchemas(db, schema).catch(() => undefined);
    await db.end();
  }
}

async function drainPgBoss(
  schema: string,
  count: number,
  batchSize: number,
  workers: number,
): Promise<number> {
  const db = benchPool(2);
  const boss = newBoss(schema, workers + 2);
  try {
    await dropSchemas(db, schema);
    await boss.start();
    await boss.createQueue('bench');
    for (let from = 0; from < count; from += 5000) {
      const jobs = [];
      for (let i = from; i < Math.min(count, from + 5000); i++) jobs.push({ data: { i } });
      await boss.insert('bench', jobs);
    }
    await db.query(`VACUUM ANALYZE ${schema}.job`).catch(() => undefined);
    const finished = counter(count);
    const started = performance.now();
    await boss.work(
      'bench',
      { batchSize, localConcurrency: workers, pollingIntervalSeconds: PGBOSS_POLLING_SECONDS },
      async (jobs) => finished.add(jobs.length),
    );
    await finished.done;
    const ms = performance.now() - started;
    await boss.offWork('bench');
    return ms;
  } finally {
    await boss.stop({ graceful: false }).catch(() => undefined);
    await dropSchemas(db, schema).catch(() => undefined);
    await db.end();
  }
}

async function install(
  system: System,
  schema: string,
  queue: string,
  notify: boolean,
): Promise<void> {
  const db = benchPool(1);
  try {
    await dropSchemas(db, schema);
  } finally {
    await db.end();
  }
  if (system === 'graphile-worker') {
    await runMigrations(graphileConnection(schema));
    return;
  }
  const boss = newBoss(schema, 2);
  await boss.start();
  // notify: pg-boss's fastest pick-up (its LISTEN/NOTIFY wake-up), for the stream's worker.
  await boss.createQueue(queue, notify ? { notify: true } : {});
  await boss.stop({ graceful: false });
}

const literal = (text: string): string => `'${text.replaceAll("'", "''")}'`;

async function enqueueSql(
  system: System,
  schema: string,
  queue: string,
  payload: string | undefined,
): Promise<string> {
  if (system === 'graphile-worker') {
    const data = payload === undefined ? '$1' : literal(payload);
    return `SELECT (${schema}.add_job(${literal(queue)}, ${data}::json)).id::text AS id`;
  }
  const boss = newBoss(schema, 2);
  await boss.start();
  try {
    const found = (await boss.getQueue(queue)) as { table?: string; notify?: boolean } | null;
    if (!found) throw new Error(`pg-boss queue ${queue} is not installed in ${schema}`);
    const plans = createRequire(import.meta.url)('pg-boss/dist/plans.js') as {
      insertJobs: (
        schema: string,
        options: { table: string; name: string; returnId: boolean; notify: boolean },
      ) => string;
    };
    const sql = plans
      .insertJobs(schema, {
        table: found.table ?? 'job',
        name: queue,
        returnId: true,
        notify: found.notify === true,
      })
      .replace(/\s+/g, ' ')
      .trim();
    // send() passes one job's fields as a JSON array; every option left at its default.
    return payload === undefined ? sql : sql.replace('$1', literal(`[{"data": ${payload}}]`));
  } finally {
    await boss.stop({ graceful: false });
  }
}

let handled = 0;
let ids: string[] = [];
let starts: number[] = [];
let stopStream: (() => Promise<void>) | undefined;

function seen(id: string, at = wallMs()): void {
  handled++;
  ids.push(id);
  starts.push(at);
}

async function streamStart(system: System, schema: string, queue: string): Promise<void> {
  if (system === 'graphile-worker') {
    const runner = await graphileRun(schema, (id) => seen(id));
    stopStream = () => runner.stop();
    return;
  }
  const boss = newBoss(schema, PGBOSS_STREAM.localConcurrency + 4, true);
  await boss.start();
  await boss.work(
    queue,
    { ...PGBOSS_STREAM, pollingIntervalSeconds: PGBOSS_POLLING_SECONDS },
    async (jobs) => {
      const at = wallMs();
      for (const job of jobs) seen(job.id, at);
    },
  );
  stopStream = () => boss.stop({ graceful: false });
}

interface Message {
  type: string;
  system: System;
  schema: string;
  queue: string;
  count: number;
  batchSize?: number;
  workers?: number;
  payload?: string;
  notify?: boolean;
}

async function answer(message: Message): Promise<Record<string, unknown>> {
  switch (message.type) {
    case 'hello':
      return { node: process.version };
    case 'drain': {
      const ms =
        message.system === 'graphile-worker'
          ? await drainGraphile(message.schema, message.count)
          : await drainPgBoss(
              message.schema,
              message.count,
              message.batchSize ?? 1000,
              message.workers ?? 4,
            );
      return { ms: round(ms), perSecond: round((message.count / ms) * 1000) };
    }
    case 'install':
      await install(message.system, message.schema, message.queue, message.notify === true);
      return {};
    case 'enqueue-sql':
      return {
        sql: await enqueueSql(message.system, message.schema, message.queue, message.payload),
      };
    case 'stream-start':
      await streamStart(message.system, message.schema, message.queue);
      return {};
    case 'progress':
      return { handled };
    case 'collect': {
      const collected = { ids, starts };
      ids = [];
      starts = [];
      return collected;
    }
    case 'stop':
      await stopStream?.();
      return {};
    default:
      throw new Error(`unknown message ${message.type}`);
  }
}

process.on('message', (message: Message) => {
  answer(message).then(
    (reply) =>
      process.send!({ ...reply, type: message.type }, () => {
        if (message.type === 'stop') process.exit(0);
      }),
    (error: unknown) =>
      process.send!({
        type: 'error',
        for: message.type,
        message: error instanceof Error ? (error.stack ?? error.message) : String(error),
      }),
  );
});
