/**
 * Transactional consumers' cost: the drain of a stored backlog by a consumer whose handler
 * writes one row, as a transactional consumer (`transactional: true`, the row written through
 * `ctx.db`, in the attempt's transaction with the ledger row) against the same consumer writing
 * the row through its own `pg` pool (autocommit; the ledger row group-committed by pgq-bridge).
 * Same run, same servers, alternating runs; the ratio reported is the median of the per-run
 * ratios (transactional / own pool). Target: >= 0.5.
 *
 * Where the time goes, per notification: the own-pool consumer pays one INSERT (its own commit)
 * and shares the ledger's batched lookup and group-committed outcome with other jobs; the
 * transactional one checks a connection out of its pool and pays two round trips of its own
 * (BEGIN + SET LOCAL + the ledger upsert as one, then COMMIT, a synchronous WAL flush per
 * notification) around the handler's INSERT.
 *
 * Run: `npm run bench:transactional [-- --count N] [-- --concurrency N] [-- --runs N]`.
 * Everything lives in a schema and a Redis prefix named `pgqbench_tx_*`, removed at the end.
 */
import { randomBytes } from 'node:crypto';
import { fileURLToPath } from 'node:url';
import { Redis } from 'ioredis';
import pg from 'pg';
import { createListener, createWorker, defineConsumer, migrate } from 'pgq-bridge';

interface Options {
  count: number;
  concurrency: number;
  runs: number;
  databaseUrl: string;
  redisUrl: string;
}

type Side = 'own-pool' | 'transactional';

function median(values: number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  const mid = Math.floor(sorted.length / 2);
  return sorted.length % 2 ? sorted[mid] : (sorted[mid - 1] + sorted[mid]) / 2;
}

async function clearPrefix(redis: Redis, prefix: string): Promise<void> {
  let cursor = '0';
  do {
    const [next, keys] = await redis.scan(cursor, 'MATCH', `${prefix}:*`, 'COUNT', 1000);
    cursor = next;
    if (keys.length > 0) await redis.unlink(...keys);
  } while (cursor !== '0');
}

/** One drain: `count` stored rows, bridged and handled; ms from the listener's start to the last row. */
async function drain(
  side: Side,
  options: Options,
  db: pg.Pool,
  schema: string,
  prefix: string,
): Promise<number> {
  const s = `"${schema}"`;
  const insert = `INSERT INTO ${s}.effects (notification_id) VALUES ($1)`;
  const own = new pg.Pool({ connectionString: options.databaseUrl, max: options.concurrency });
  let left = options.count;
  let finish!: () => void;
  const finished = new Promise<void>((resolve) => (finish = resolve));
  const done = (): void => {
    if (--left === 0) finish();
  };
  const consumer =
    side === 'transactional'
      ? defineConsumer({
          id: 'bench',
          channels: ['bench'],
          concurrency: options.concurrency,
          transactional: true,
          async handle(n, _job, { db: tx }) {
            await tx.query(insert, [n.id]);
            done();
          },
        })
      : defineConsumer({
          id: 'bench',
          channels: ['bench'],
          concurrency: options.concurrency,
          async handle(n) {
            await own.query(insert, [n.id]);
            done();
          },
        });
  const settings = {
    databaseUrl: options.databaseUrl,
    listenDatabaseUrl: options.databaseUrl,
    redisUrl: options.redisUrl,
    schema,
    prefix,
  };
  const worker = createWorker({ settings, consumers: [consumer] });
  await worker.start();
  await db.query(`TRUNCATE ${s}.notifications, ${s}.deliveries, ${s}.effects`);
  await db.query(
    `SELECT ${s}.notify('bench', jsonb_build_object('i', i)) FROM generate_series(1, $1::int) AS i`,
    [options.count],
  );
  await db.query(`VACUUM ANALYZE ${s}.notifications`);
  const listener = createListener({ settings });
  const started = performance.now();
  await listener.start();
  await finished;
  const ms = performance.now() - started;
  await listener.stop();
  await worker.close();
  await own.end();
  const { rows } = await db.query<{ n: number }>(`SELECT count(*)::int AS n FROM ${s}.effects`);
  if (rows[0].n !== options.count) {
    throw new Error(`${side}: ${rows[0].n} effect rows for ${options.count} notifications`);
  }
  return ms;
}

async function bench(options: Options): Promise<void> {
  const tag = randomBytes(4).toString('hex');
  const schema = `pgqbench_tx_${tag}`;
  const prefix = `pgqbench_tx_${tag}`;
  const db = new pg.Pool({ connectionString: options.databaseUrl, max: 2 });
  const redis = new Redis(options.redisUrl, { maxRetriesPerRequest: null });
  const runs: { own: number; tx: number; ratio: number }[] = [];
  try {
    await migrate({ db, schema });
    await db.query(`CREATE TABLE "${schema}".effects (notification_id bigint NOT NULL)`);
    for (let i = 0; i < options.runs; i++) {
      const perSecond = (ms: number): number => Math.round((options.count / ms) * 1000);
      const own = perSecond(await drain('own-pool', options, db, schema, prefix));
      await clearPrefix(redis, prefix);
      const tx = perSecond(await drain('transactional', options, db, schema, prefix));
      await clearPrefix(redis, prefix);
      runs.push({ own, tx, ratio: Math.round((tx / own) * 1000) / 1000 });
    }
  } finally {
    await db.query(`DROP SCHEMA IF EXISTS "${schema}" CASCADE`).catch(() => undefined);
    await clearPrefix(redis, prefix).catch(() => undefined);
    await db.end();
    redis.disconnect();
  }
  console.log(
    `drain of ${options.count} notifications, one row written per notification, ` +
      `concurrency ${options.concurrency}`,
  );
  console.log('   run  own pool notif/s  transactional notif/s  ratio');
  runs.forEach((r, i) =>
    console.log(
      `${String(i + 1).padStart(6)}  ${String(r.own).padStart(16)}  ${String(r.tx).padStart(21)}  ${r.ratio.toFixed(3)}`,
    ),
  );
  const ratio = median(runs.map((r) => r.ratio));
  console.log(
    `median ${String(median(runs.map((r) => r.own))).padStart(16)}  ${String(median(runs.map((r) => r.tx))).padStart(21)}  ${ratio.toFixed(3)}`,
  );
  console.log(`ratio ${ratio.toFixed(3)} (target >= 0.5): ${ratio >= 0.5 ? 'met' : 'NOT met'}`);
  console.log(
    JSON.stringify({
      options: { ...options, databaseUrl: undefined, redisUrl: undefined },
      runs,
      ratio,
    }),
  );
}

function flag(args: string[], name: string, fallback: number): number {
  const i = args.indexOf(`--${name}`);
  if (i < 0) return fallback;
  const value = Number(args[i + 1]);
  if (!Number.isInteger(value) || value < 1) {
    throw new Error(`--${name} expects a positive integer, got ${args[i + 1]}`);
  }
  return value;
}

if (process.argv[1] && fileURLToPath(import.meta.url) === process.argv[1]) {
  const args = process.argv.slice(2);
  bench({
    count: flag(args, 'count', 20_000),
    concurrency: flag(args, 'concurrency', 20),
    runs: flag(args, 'runs', 3),
    databaseUrl: process.env.DATABASE_URL ?? 'postgres://postgres@localhost:5432/postgres',
    redisUrl: process.env.REDIS_URL ?? 'redis://127.0.0.1:6379',
  }).catch((error: unknown) => {
    console.error(error instanceof Error ? (error.stack ?? error.message) : String(error));
    process.exit(1);
  });
}
