/**
 * A/B: the same drain, alternating between this build and another checkout's build, with raw
 * BullMQ as the reference in between, so that machine-load drift hits all alike. Used to record
 * the before/after figures of each optimization (docs/performance.md).
 *
 *   git worktree add /tmp/pgq-before <commit> && ln -s $PWD/node_modules /tmp/pgq-before/
 *   (cd /tmp/pgq-before && npx tsc -p tsconfig.build.json)
 *   node --import tsx bench/ab.ts /tmp/pgq-before [--count N] [--rounds N] [--batch SIZE]
 */
import { resolve } from 'node:path';
import { pathToFileURL } from 'node:url';
import * as current from 'pgq-bridge';
import { rawRun } from './drain.js';
import { drainBridge } from './fanout.js';
import {
  DATABASE_URL,
  REDIS_URL,
  benchRedis,
  clearPrefix,
  median,
  printTable,
  round,
} from './lib/common.js';

const args = process.argv.slice(2);
const other = args[0];
if (!other || other.startsWith('--')) {
  throw new Error('usage: bench/ab.ts <other checkout> [--count N] [--rounds N] [--batch SIZE]');
}
const flag = (name: string, fallback: number): number => {
  const i = args.indexOf(`--${name}`);
  return i < 0 ? fallback : Number(args[i + 1]);
};
const count = flag('count', 50_000);
const rounds = flag('rounds', 3);
const batch = flag('batch', 0);
const before = (await import(
  pathToFileURL(resolve(other, 'dist', 'index.js')).href
)) as typeof current;

const consumers = [
  batch > 0
    ? { id: 'bench', concurrency: 4, batch: { size: batch, maxWaitMs: 0 } }
    : { id: 'bench', concurrency: 50 },
];
const redis = benchRedis();
const figures: Record<string, number[]> = { raw: [], before: [], after: [] };
for (let r = 0; r < rounds; r++) {
  const prefix = 'pgqbench_ab_raw';
  figures.raw.push(
    (
      await rawRun(
        {
          count,
          concurrency: 50,
          batchSize: 500,
          runs: 1,
          databaseUrl: DATABASE_URL,
          redisUrl: REDIS_URL,
        },
        redis,
        prefix,
      )
    ).perSecond,
  );
  await clearPrefix(redis, prefix);
  figures.before.push((await drainBridge(count, consumers, { lib: before })).perSecond);
  figures.after.push((await drainBridge(count, consumers)).perSecond);
}
redis.disconnect();
const raw = median(figures.raw);
printTable(
  `A/B drain of ${count} notifications${batch ? ` (batch consumer, size ${batch})` : ''}, median of ${rounds} alternating rounds`,
  (['raw', 'before', 'after'] as const).map((k) => ({
    build:
      k === 'raw' ? 'raw BullMQ' : k === 'before' ? `before (${other})` : 'after (this checkout)',
    'notifications/s': median(figures[k]),
    'vs raw BullMQ': round(median(figures[k]) / raw, 2),
    runs: figures[k].join(' '),
  })),
);
