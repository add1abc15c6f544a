/**
 * Ingest cost: what `notify()` costs the user's own writes, and how fast an idle listener wakes.
 *
 * pgbench runs 8 clients, each transaction one round trip: a plain INSERT into an application
 * table, or the same INSERT plus a notify() call in the same transaction (`\;` sends both as
 * one simple query, i.e. one implicit transaction). `row only` adds a plain INSERT into a table
 * shaped like notifications instead: the floor of any design that stores a row per notification.
 * `function only` calls a PL/pgSQL function whose body is only that INSERT: the floor of any
 * `notify()` written in SQL (what a plain `SELECT f()` and a PL/pgSQL call cost on their own).
 * Two notify() bodies run side by side:
 * `notify-v1` is the 0001 body (pg_notify on every call, the "before"), `notify` is the current
 * one (pg_notify only while no listener holds the wake-up lease, the "after").
 *
 * `notify() per call` times 20,000 calls in one statement on one connection, in a transaction that
 * is rolled back, with the lease live: the server CPU each body costs, without commits or clients.
 *
 * Conditions: no listener; the lease held with no listener (the writers' own cost); a listener that
 * starts idle and follows the writes; a listener busy draining a backlog. Variants run interleaved so that drift in machine load hits all alike.
 *
 * The alternatives' transactional enqueue (graphile-worker's `add_job()`, the `INSERT` of pg-boss's
 * `send()`) runs in the two conditions without a listener: it does not depend on ours.
 * They answer "what does a durable enqueue in my transaction cost with each system?".
 *
 * Beside the single INSERT, a business transaction: pgbench's TPC-B-like script (one round trip
 * per statement), alone and with notify() as one more statement; its ratio is to the script alone.
 *
 * Run: `npm run bench:ingest [-- --quick] [-- --rounds N]`.
 */
import { execFile } from 'node:child_process';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import type pg from 'pg';
import { createListener, createWorker, migrate, type Listener } from 'pgq-bridge';
import { ALTERNATIVE_SCHEMAS, alternativeEnqueueSql, alternativeVersions } from './alternatives.js';
import {
  DATABASE_URL,
  REDIS_URL,
  benchPool,
  benchRedis,
  clearPrefix,
  dropSchemas,
  isMain,
  latencyOf,
  median,
  parseFlags,
  printTable,
  round,
  sleep,
  wallMs,
  type BenchFlags,
  type Latency,
} from './lib/common.js';

const run = promisify(execFile);

const SCHEMA = 'pgqbench_ingest';
const APP = 'pgqbench_app';
const PREFIX = 'pgqbench_ingest';
const CLIENTS = 8;

/** The variants of a write transaction. */
const VARIANTS = [
  'insert',
  'row only',
  'function only',
  'notify-v1',
  'notify',
  'graphile-worker add_job',
  'pg-boss send',
  'tpcb',
  'tpcb + notify',
] as const;
type Variant = (typeof VARIANTS)[number];
/**
 * Variants measured only in the conditions without a listener: the other systems' enqueue, and
 * the realistic transaction (pgbench's TPC-B-like script), whose cost does not depend on ours.
 */
const WITHOUT_LISTENER_ONLY: readonly Variant[] = [
  'graphile-worker add_job',
  'pg-boss send',
  'tpcb',
  'tpcb + notify',
];
/** The reference of a variant's ratio, when it is not the plain INSERT. */
const REFERENCE: Partial<Record<Variant, Variant>> = { 'tpcb + notify': 'tpcb' };
/** Scale of the TPC-B-like tables (accounts = 100,000 × scale): little row contention at 8 clients. */
const TPCB_SCALE = 8;
/** What the listener does meanwhile. */
const CONDITIONS = [
  'no listener',
  // The lease forced live with no listener running: what the writers alone pay while a busy
  // listener (say, on another host) holds the lease, without its CPU competing on this machine.
  'lease held, no listener',
  'listener following the writes',
  'listener busy (backlog)',
];
const FOLLOWING = 2;
const BUSY = 3;

/** Result of {@link benchIngest}. */
export interface IngestResult {
  clients: number;
  seconds: number;
  rounds: number;
  cases: {
    condition: string;
    variant: Variant;
    tps: number;
    /** tps / tps of the plain INSERT in the same condition. */
    ratio: number;
    /** Rows of the backlog left when the run ended (busy condition: > 0 means it stayed busy). */
    backlogLeft?: number;
  }[];
  /** Server time per notify() call, µs (median of 3 statements of 20,000 calls each). */
  perCallUs: { 'notify-v1': number; notify: number };
  /** Idle listener: notify() committed → its job is in Redis. */
  wake: Latency;
  /** Versions of the alternatives whose enqueue SQL ran, and the Node that generated it. */
  alternatives: Record<string, string>;
}

const PER_CALL_N = 20_000;

const INSERT = `INSERT INTO ${APP}.orders (customer, amount) VALUES ('c42', 1)`;
const PAYLOAD = '{"amount": 1}';
/** The call every notify variant adds to its transaction. */
const NOTIFY_CALL = `SELECT ${SCHEMA}.notify('orders', '${PAYLOAD}')`;
/** pgbench's `tpcb-like` script, on the tables `pgbench -i` creates in the APP schema. */
const TPCB = `\\set aid random(1, 100000 * ${TPCB_SCALE})
\\set bid random(1, 1 * ${TPCB_SCALE})
\\set tid random(1, 10 * ${TPCB_SCALE})
\\set delta random(-5000, 5000)
BEGIN;
UPDATE ${APP}.pgbench_accounts SET abalance = abalance + :delta WHERE aid = :aid;
SELECT abalance FROM ${APP}.pgbench_accounts WHERE aid = :aid;
UPDATE ${APP}.pgbench_tellers SET tbalance = tbalance + :delta WHERE tid = :tid;
UPDATE ${APP}.pgbench_branches SET bbalance = bbalance + :delta WHERE bid = :bid;
INSERT INTO ${APP}.pgbench_history (tid, bid, aid, delta, mtime) VALUES (:tid, :bid, :aid, :delta, CURRENT_TIMESTAMP);
END;
`;

/** The pgbench script of each variant; `alternatives` holds the other systems' enqueue SQL. */
function scripts(alternatives: {
  graphileWorker: string;
  pgBoss: string;
}): Record<Variant, string> {
  return {
    insert: `${INSERT};\n`,
    // The floor of any design that stores the notification as a row: the same INSERT plus a plain
    // INSERT into a table shaped like notifications (same columns and indexes), no function.
    'row only': `${INSERT} \\; INSERT INTO ${APP}.shaped (channel, payload) VALUES ('orders', '${PAYLOAD}');\n`,
    // The floor of a notify() function: a PL/pgSQL body that does nothing but store the row.
    'function only': `${INSERT} \\; SELECT ${APP}.insert_only('orders', '${PAYLOAD}');\n`,
    'notify-v1': `${INSERT} \\; SELECT ${APP}.notify_v1('orders', '${PAYLOAD}');\n`,
    notify: `${INSERT} \\; ${NOTIFY_CALL};\n`,
    'graphile-worker add_job': `${INSERT} \\; ${alternatives.graphileWorker};\n`,
    'pg-boss send': `${INSERT} \\; ${alternatives.pgBoss};\n`,
    // A business transaction rather than a single INSERT: pgbench's built-in TPC-B-like script
    // (3 UPDATEs, a SELECT and an INSERT, one round trip each), and the same with notify() as
    // one more statement before the commit, as an application would send it.
    tpcb: TPCB,
    'tpcb + notify': TPCB.replace('END;', `${NOTIFY_CALL};\nEND;`),
  };
}

async function pgbench(file: string, seconds: number): Promise<number> {
  const { stdout } = await run(
    'pgbench',
    ['-n', '-c', String(CLIENTS), '-j', '2', '-T', String(seconds), '-f', file, DATABASE_URL],
    { maxBuffer: 10 * 1024 * 1024 },
  );
  const match = /tps = ([\d.]+) \(without initial connection time\)/.exec(stdout);
  if (!match) throw new Error(`unexpected pgbench output: ${stdout}`);
  return Number(match[1]);
}

/**
 * Server time of one `fn('orders', ...)` call, in µs: PER_CALL_N calls in one statement, rolled
 * back, with the wake-up lease live (so the current body skips pg_notify, as under a busy listener).
 */
async function usPerCall(db: pg.Pool, fn: string): Promise<number> {
  const client = await db.connect();
  try {
    const runs: number[] = [];
    for (let i = 0; i < 4; i++) {
      await client.query('BEGIN');
      await client.query(`UPDATE ${SCHEMA}.listener_lease SET awake_until = 'infinity'`);
      const start = wallMs();
      await client.query(
        `SELECT count(${fn}('orders', '{"amount": 1}')) FROM generate_series(1, $1)`,
        [PER_CALL_N],
      );
      // The first statement also compiles the function: not counted.
      if (i > 0) runs.push(((wallMs() - start) * 1000) / PER_CALL_N);
      await client.query('ROLLBACK');
    }
    return round(median(runs), 2);
  } finally {
    client.release();
  }
}

/** Measures ingest tps per condition and variant, and the wake latency of an idle listener. */
export async function benchIngest(flags: BenchFlags): Promise<IngestResult> {
  const seconds = flags.quick ? 2 : 4;
  // Large enough to outlast the pgbench run (the listener drains 10,000-20,000 rows/s here), so
  // the listener stays busy throughout: "backlog left" in the table must stay above 0.
  const backlogRows = flags.quick ? 75_000 : 150_000;
  const db = benchPool();
  const redis = benchRedis();
  const dir = await mkdtemp(join(tmpdir(), 'pgq-bench-'));
  let listener: Listener | undefined;
  try {
    await dropSchemas(db, SCHEMA, APP);
    await clearPrefix(redis, PREFIX);
    await migrate({ db: DATABASE_URL, schema: SCHEMA });
    await db.query(`CREATE SCHEMA ${APP}`);
    // pgbench's TPC-B-like tables, in the APP schema.
    await run('pgbench', ['-i', '-q', '-s', String(TPCB_SCALE), DATABASE_URL], {
      env: { ...process.env, PGOPTIONS: `-c search_path=${APP}` },
    });
    await db.query(`CREATE TABLE ${APP}.orders (
      id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, customer text NOT NULL,
      amount numeric NOT NULL, created_at timestamptz NOT NULL DEFAULT now())`);
    await db.query(`CREATE TABLE ${APP}.shaped (LIKE ${SCHEMA}.notifications INCLUDING ALL)`);
    await db.query(`CREATE FUNCTION ${APP}.insert_only(channel text, payload jsonb) RETURNS bigint
      LANGUAGE plpgsql AS $fn$
      #variable_conflict use_variable
      DECLARE new_id bigint;
      BEGIN
        INSERT INTO ${APP}.shaped (channel, payload) VALUES (channel, payload) RETURNING id INTO new_id;
        RETURN new_id;
      END $fn$`);
    // The 0001 notify() body: pg_notify on every call. The "before" of the wake-up lease.
    await db.query(`CREATE FUNCTION ${APP}.notify_v1(channel text, payload jsonb) RETURNS bigint
      LANGUAGE plpgsql AS $fn$
      #variable_conflict use_variable
      DECLARE new_id bigint;
      BEGIN
        IF channel IS NULL OR channel !~ '^[A-Za-z0-9_.:-]{1,63}$' THEN
          RAISE EXCEPTION 'invalid channel';
        END IF;
        INSERT INTO ${SCHEMA}.notifications (channel, payload, context)
        VALUES (channel, coalesce(payload, 'null'::jsonb), ${SCHEMA}.current_context())
        RETURNING id INTO new_id;
        PERFORM pg_notify('${SCHEMA}', '');
        RETURN new_id;
      END $fn$`);
    // A consumer subscribed to both channels, so the listener does its real work (jobs in Redis);
    // no worker runs, and the queue is emptied after each run.
    const worker = createWorker({
      settings: { databaseUrl: DATABASE_URL, redisUrl: REDIS_URL, schema: SCHEMA, prefix: PREFIX },
      consumers: [{ id: 'ingest', channels: ['orders', 'backlog'], handle: () => undefined }],
    });
    await worker.start();
    await worker.close();
    const enqueue = await alternativeEnqueueSql('orders', PAYLOAD);
    const SCRIPTS = scripts(enqueue);
    for (const variant of VARIANTS) await writeFile(join(dir, `${variant}.sql`), SCRIPTS[variant]);

    const unbridged = async (): Promise<number> =>
      Number(
        (
          await db.query<{ n: string }>(
            `SELECT count(*) AS n FROM ${SCHEMA}.notifications WHERE bridged_at IS NULL`,
          )
        ).rows[0].n,
      );
    const settle = async (): Promise<void> => {
      if (listener) {
        // Let the listener finish what the last run left, then let its lease lapse.
        while ((await unbridged()) > 0) await sleep(200);
        await sleep(1500);
      } else {
        await db.query(
          `UPDATE ${SCHEMA}.notifications SET bridged_at = now() WHERE bridged_at IS NULL`,
        );
      }
      await clearPrefix(redis, PREFIX);
    };

    const tps = new Map<string, number[]>();
    const backlogLeft = new Map<string, number[]>();
    for (const [c, condition] of CONDITIONS.entries()) {
      await db.query(`UPDATE ${SCHEMA}.listener_lease SET awake_until = $1`, [
        c === 1 ? 'infinity' : '-infinity',
      ]);
      if (c === FOLLOWING) {
        listener = createListener({
          settings: {
            databaseUrl: DATABASE_URL,
            listenDatabaseUrl: DATABASE_URL,
            redisUrl: REDIS_URL,
            schema: SCHEMA,
            prefix: PREFIX,
          },
        });
        await listener.start();
      }
      for (let r = 0; r < flags.rounds; r++) {
        for (const variant of VARIANTS) {
          if (c > 1 && WITHOUT_LISTENER_ONLY.includes(variant)) continue;
          await settle();
          if (c === BUSY) {
            await db.query(
              `INSERT INTO ${SCHEMA}.notifications (channel, payload)
               SELECT 'backlog', jsonb_build_object('i', g) FROM generate_series(1, $1) g`,
              [backlogRows],
            );
            await db.query(`SELECT pg_notify('${SCHEMA}', '')`);
            const before = listener!.stats.bridged;
            while (listener!.stats.bridged === before) await sleep(5);
          }
          const key = `${condition}|${variant}`;
          tps.set(key, [
            ...(tps.get(key) ?? []),
            await pgbench(join(dir, `${variant}.sql`), seconds),
          ]);
          if (c === BUSY) {
            const left = Number(
              (
                await db.query<{ n: string }>(
                  `SELECT count(*) AS n FROM ${SCHEMA}.notifications
                    WHERE bridged_at IS NULL AND channel = 'backlog'`,
                )
              ).rows[0].n,
            );
            backlogLeft.set(key, [...(backlogLeft.get(key) ?? []), left]);
            await db.query(
              `UPDATE ${SCHEMA}.notifications SET bridged_at = now() WHERE bridged_at IS NULL`,
            );
          }
        }
      }
    }

    await settle();
    const perCallUs = {
      'notify-v1': await usPerCall(db, `${APP}.notify_v1`),
      notify: await usPerCall(db, `${SCHEMA}.notify`),
    };

    // Wake latency of an idle listener: one notify at a time, far enough apart that the
    // listener sleeps on NOTIFY (a lone writer is below the lease's rate threshold).
    await settle();
    // The runs above left hundreds of thousands of dead row versions: vacuum them now, so that
    // neither an autovacuum nor claims stepping over dead index entries time the bench's own
    // leftovers instead of the wake-up.
    await db.query(`VACUUM ANALYZE ${SCHEMA}.notifications`);
    const samples: number[] = [];
    let committedAt = 0;
    let pending: ((t: number) => void) | undefined;
    listener!.on('batch', () => pending?.(wallMs()));
    for (let i = 0; i < (flags.quick ? 10 : 30); i++) {
      await sleep(150);
      const bridged = new Promise<number>((resolve) => (pending = resolve));
      await db.query(`SELECT ${SCHEMA}.notify('orders', '{"wake": true}')`);
      committedAt = wallMs();
      samples.push((await bridged) - committedAt);
    }

    const cases: IngestResult['cases'] = [];
    for (const condition of CONDITIONS) {
      for (const variant of VARIANTS) {
        const key = `${condition}|${variant}`;
        if (!tps.has(key)) continue;
        const base = median(tps.get(`${condition}|${REFERENCE[variant] ?? 'insert'}`) ?? [NaN]);
        const value = median(tps.get(key) ?? [NaN]);
        const left = backlogLeft.get(key);
        cases.push({
          condition,
          variant,
          tps: round(value),
          ratio: round(value / base, 2),
          ...(left ? { backlogLeft: Math.min(...left) } : {}),
        });
      }
    }
    return {
      clients: CLIENTS,
      seconds,
      rounds: flags.rounds,
      cases,
      perCallUs,
      wake: latencyOf(samples),
      alternatives: { ...alternativeVersions(), 'SQL generated on Node': enqueue.node },
    };
  } finally {
    await listener?.stop();
    await dropSchemas(db, SCHEMA, APP, ...ALTERNATIVE_SCHEMAS).catch(() => undefined);
    await clearPrefix(redis, PREFIX).catch(() => undefined);
    await rm(dir, { recursive: true, force: true });
    await db.end();
    redis.disconnect();
  }
}

const LABELS: Record<Variant, string> = {
  insert: 'INSERT',
  'row only': 'INSERT + INSERT of a notification-shaped row',
  'function only': 'INSERT + a function that only does that INSERT',
  'notify-v1': 'INSERT + notify-v1()',
  notify: 'INSERT + notify()',
  'graphile-worker add_job': 'INSERT + graphile-worker add_job()',
  'pg-boss send': "INSERT + pg-boss send()'s INSERT",
  tpcb: 'TPC-B-like transaction (ratio to INSERT)',
  'tpcb + notify': 'TPC-B-like + notify() (ratio to TPC-B-like)',
};

/** Prints the result of {@link benchIngest}. */
export function printIngest(result: IngestResult): void {
  console.log(
    `\nIngest alternatives (their own SQL, run by pgbench): ${Object.entries(result.alternatives)
      .map(([k, v]) => `${k} ${v}`)
      .join(', ')}`,
  );
  printTable(
    `Ingest: ${result.clients} connections, ${result.seconds} s per run, median of ${result.rounds} (tps; ratio to plain INSERT in the same condition)`,
    result.cases.map((c) => ({
      condition: c.condition,
      transaction: LABELS[c.variant],
      tps: c.tps,
      ratio: c.ratio,
      ...(c.backlogLeft !== undefined ? { 'backlog left': c.backlogLeft } : {}),
    })),
  );
  printTable('notify() server time per call, µs (lease live; one statement of 20,000 calls)', [
    { 'notify-v1': result.perCallUs['notify-v1'], notify: result.perCallUs.notify },
  ]);
  const w = result.wake;
  printTable('Wake latency of an idle listener: notify() committed → job in Redis (ms)', [
    { samples: w.count, p50: w.p50, p95: w.p95, p99: w.p99, max: w.max },
  ]);
}

if (isMain(import.meta.url)) {
  const flags = parseFlags(process.argv.slice(2));
  const result = await benchIngest(flags);
  printIngest(result);
  console.log(JSON.stringify({ ingest: result }, null, 2));
}
