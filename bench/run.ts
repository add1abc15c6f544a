/**
 * `npm run bench`: every benchmark in one run on the same Postgres and Redis, printed as tables and
 * as one JSON document (also written to `--json FILE`).
 *
 *   npm run bench                      # full (a few minutes)
 *   npm run bench -- --quick           # smaller counts, shorter runs (about a minute)
 *   npm run bench -- --only drain,stream --rounds 3 --json bench/latest.json
 *
 * Sections: ingest (bench/ingest.ts), drain (bench/drain.ts for pgq-bridge vs raw BullMQ,
 * bench/alternatives.ts for graphile-worker and pg-boss, bench/fanout.ts for packed delivery and
 * batch consumers),
 * fan-out (bench/fanout.ts), live stream (bench/stream.ts).
 */
import { writeFile } from 'node:fs/promises';
import { cpus, totalmem } from 'node:os';
import { benchDrain } from './drain.js';
import {
  GRAPHILE_SETTINGS,
  alternativeVersions,
  drainGraphile,
  drainPgBoss,
} from './alternatives.js';
import { benchFanout, drainBridge, printFanout } from './fanout.js';
import { benchIngest, printIngest } from './ingest.js';
import { benchStream, printStream } from './stream.js';
import {
  DATABASE_URL,
  REDIS_URL,
  benchPool,
  benchRedis,
  median,
  parseFlags,
  printTable,
  round,
  type BenchFlags,
} from './lib/common.js';

/** Batch size shared by pgq-bridge batch consumers and pg-boss in the drain comparison. */
const BATCH = 1000;
/** Concurrent batch handlers (pgq-bridge consumer concurrency, pg-boss `work()` calls). */
const BATCH_HANDLERS = 4;
/** Notifications per job of the packed consumer (`batch.size` with a plain `handle`). */
const PACK = 50;

interface DrainRow {
  system: string;
  mode: string;
  perSecond: number;
  /** Ratio to raw BullMQ in the same round. */
  vsRaw: number;
  vsGraphile?: number;
  vsPgBoss?: number;
  /** The Node version the system ran on. */
  node: string;
}

async function benchDrains(flags: BenchFlags): Promise<{ count: number; rows: DrainRow[] }> {
  const count = flags.quick ? 20_000 : 50_000;
  const per = new Map<string, number[]>();
  const nodes = new Map<string, string>();
  const add = (key: string, value: number): void => {
    per.set(key, [...(per.get(key) ?? []), value]);
  };
  // Each round runs every system once; the order rotates from round to round, so a previous
  // run's checkpoint or autovacuum does not always land in the same system's figures.
  const steps: (() => Promise<void>)[] = [
    async () => {
      const pair = await benchDrain({
        count,
        concurrency: 50,
        batchSize: 500,
        runs: 1,
        databaseUrl: DATABASE_URL,
        redisUrl: REDIS_URL,
      });
      add('raw', pair.runs[0].raw.perSecond);
      add('bridge', pair.runs[0].bridge.perSecond);
    },
    async () => {
      const graphile = await drainGraphile(count);
      add('graphile', graphile.perSecond);
      nodes.set('graphile', graphile.node);
    },
    async () => {
      const pgboss = await drainPgBoss(count, { batchSize: BATCH, workers: BATCH_HANDLERS });
      add('pgboss', pgboss.perSecond);
      nodes.set('pgboss', pgboss.node);
    },
    async () => {
      // Packed delivery: a plain one-at-a-time handle, the notifications travel 50 per job.
      const packed = await drainBridge(count, [
        { id: 'bench', concurrency: 50, batch: { size: PACK, maxWaitMs: 0 }, packed: true },
      ]);
      add('bridge-packed', packed.perSecond);
    },
    async () => {
      try {
        const batch = await drainBridge(count, [
          { id: 'bench', concurrency: BATCH_HANDLERS, batch: { size: BATCH, maxWaitMs: 0 } },
        ]);
        add('bridge-batch', batch.perSecond);
      } catch (error) {
        console.error(`pgq-bridge batch drain failed: ${(error as Error).message}`);
      }
    },
  ];
  for (let r = 0; r < flags.rounds; r++) {
    for (let i = 0; i < steps.length; i++) await steps[(r + i) % steps.length]();
  }
  const m = (key: string): number => (per.has(key) ? median(per.get(key)!) : NaN);
  const raw = m('raw');
  const versions = alternativeVersions();
  const graphile = m('graphile');
  const pgboss = m('pgboss');
  const row = (system: string, mode: string, key: string, vsAlternatives = false): DrainRow => ({
    system,
    mode,
    perSecond: m(key),
    vsRaw: round(m(key) / raw, 2),
    node: nodes.get(key) ?? process.version,
    ...(vsAlternatives
      ? { vsGraphile: round(m(key) / graphile, 2), vsPgBoss: round(m(key) / pgboss, 2) }
      : {}),
  });
  return {
    count,
    rows: [
      row('raw BullMQ', 'addBulk 500 + Worker, concurrency 50 (reference)', 'raw'),
      row('pgq-bridge', 'one job per notification, concurrency 50', 'bridge'),
      row(
        `graphile-worker ${versions['graphile-worker']}`,
        `localQueue ${GRAPHILE_SETTINGS.localQueue.size}, ${GRAPHILE_SETTINGS.concurrentJobs} concurrent jobs`,
        'graphile',
      ),
      row(
        `pg-boss ${versions['pg-boss']}`,
        `batchSize ${BATCH}, localConcurrency ${BATCH_HANDLERS}`,
        'pgboss',
      ),
      row(
        'pgq-bridge',
        `packed: plain handle, ${PACK} per job, concurrency 50`,
        'bridge-packed',
        true,
      ),
      row(
        'pgq-bridge',
        `batch consumer, size ${BATCH}, concurrency ${BATCH_HANDLERS}`,
        'bridge-batch',
        true,
      ),
    ],
  };
}

async function serverInfo(): Promise<Record<string, string>> {
  const db = benchPool(1);
  const redis = benchRedis();
  try {
    const setting = async (name: string): Promise<string> =>
      (await db.query<{ v: string }>('SELECT current_setting($1) AS v', [name])).rows[0].v;
    const pgVersion = await setting('server_version');
    const sync = await setting('synchronous_commit');
    const info = await redis.info('server');
    const redisVersion = /redis_version:(\S+)/.exec(info)?.[1] ?? '?';
    return {
      cpus: `${cpus().length} × ${cpus()[0]?.model ?? '?'}`,
      memory: `${round(totalmem() / 2 ** 30, 1)} GiB`,
      node: process.version,
      postgres: `${pgVersion} (synchronous_commit=${sync})`,
      redis: redisVersion,
    };
  } finally {
    await db.end();
    redis.disconnect();
  }
}

const flags = parseFlags(process.argv.slice(2));
const want = (section: string): boolean => !flags.only || flags.only.includes(section);
const result: Record<string, unknown> = {
  date: new Date().toISOString(),
  quick: flags.quick,
  rounds: flags.rounds,
  machine: await serverInfo(),
};
console.log(`pgq-bridge bench${flags.quick ? ' (--quick)' : ''}:`, result.machine);

if (want('ingest')) {
  const ingest = await benchIngest(flags);
  printIngest(ingest);
  result.ingest = ingest;
}
if (want('drain')) {
  const drain = await benchDrains(flags);
  printTable(
    `Backlog drain: ${drain.count} stored notifications → all no-op handlers done, one process each (median of ${flags.rounds}; ratios in the same run)`,
    drain.rows.map((r) => ({
      system: r.system,
      mode: r.mode,
      'notifications/s': r.perSecond,
      'vs raw BullMQ': r.vsRaw,
      'vs graphile-worker': r.vsGraphile ?? null,
      'vs pg-boss': r.vsPgBoss ?? null,
      node: r.node,
    })),
  );
  result.drain = drain;
}
if (want('fanout')) {
  const fanout = await benchFanout(flags);
  printFanout(fanout);
  result.fanout = fanout;
}
if (want('stream')) {
  const stream = await benchStream(flags);
  printStream(stream);
  result.stream = stream;
}
const json = JSON.stringify(result, null, 2);
console.log(`\n${json}`);
if (flags.json) await writeFile(flags.json, json + '\n');
