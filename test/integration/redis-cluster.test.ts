/**
 * Issue 5, Redis Cluster: the core end-to-end scenario (listen + work, fan-out to two consumers,
 * each (consumer, notification) handled exactly once) on a throwaway 3-node cluster given as
 * comma-separated REDIS_URL nodes; status, board and reconcile run on it too. The BullMQ prefix
 * gets a hash tag, so every key of the bridge lives in one slot.
 */
import { Cluster } from 'ioredis';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { runCli, startCli } from '../support/cli.js';
import { startRedisCluster, type ThrowawayCluster } from '../support/cluster.js';
import { createTestEnv, type TestEnv } from '../support/env.js';
import {
  logsWith,
  migrateWithRanTable,
  RAN,
  removeOpsConsumers,
  sendMany,
  startListening,
  writeOpsConsumers,
} from '../support/ops.js';
import { freePort } from '../support/servers.js';
import { waitFor } from '../support/wait.js';

let cluster: ThrowawayCluster;
let t: TestEnv;
beforeAll(async () => {
  cluster = await startRedisCluster();
  t = createTestEnv({ extraEnv: {} });
  t.env.REDIS_URL = cluster.url;
  await migrateWithRanTable(t);
}, 60_000);
afterAll(async () => {
  await t?.cleanup();
  await cluster?.destroy();
  removeOpsConsumers();
});

async function ranPairs(): Promise<{ total: number; distinct: number }> {
  const { rows } = await t.pool.query<{ total: number; distinct: number }>(
    `SELECT count(*)::int AS total, count(DISTINCT (consumer, notification_id))::int AS distinct
       FROM "${t.schema}".ran`,
  );
  return rows[0];
}

describe('Redis Cluster', () => {
  it('bridges and handles every notification exactly once on a 3-node cluster', async () => {
    const dir = writeOpsConsumers({
      'c.mjs': `${RAN}
export default [
  defineConsumer({ id: 'cl-both', channels: ['a', 'b'], concurrency: 4,
    async handle(n) { await ran('cl-both', n, 'done'); } }),
  defineConsumer({ id: 'cl-a', channels: ['a'], concurrency: 4,
    async handle(n) { await ran('cl-a', n, 'done'); } }),
];`,
    });
    const work = startCli(['work', '--consumers-dir', dir], { env: t.env });
    await waitFor(() => logsWith(work, 'consumer registered; worker started').length === 2, {
      timeoutMs: 20_000,
      message: 'work ready on the cluster',
    });
    const listen = await startListening(t.env);
    const a = await sendMany(t, 'a', 40);
    const b = await sendMany(t, 'b', 20);
    await waitFor(async () => (await ranPairs()).total >= a.length * 2 + b.length, {
      timeoutMs: 30_000,
      message: 'all handled',
    });
    await new Promise((resolve) => setTimeout(resolve, 300));
    expect(await ranPairs()).toEqual({ total: 100, distinct: 100 });

    // Every BullMQ key carries the hash tag {prefix}.
    const redis = new Cluster(cluster.ports.map((port) => ({ host: '127.0.0.1', port })));
    try {
      await new Promise((resolve) => redis.once('ready', resolve));
      const keys = (await Promise.all(redis.nodes('master').map((node) => node.keys('*')))).flat();
      expect(keys.length).toBeGreaterThan(0);
      expect(keys.every((k) => k.startsWith(`{${t.prefix}}:`))).toBe(true);
    } finally {
      redis.disconnect();
    }

    const status = await runCli(['status', '--json'], { env: t.env });
    expect(status.code, status.stderr).toBe(0);
    const report = JSON.parse(status.stdout) as {
      prefix: string;
      consumers: Array<{ id: string; counts: { completed: number } }>;
    };
    expect(report.prefix).toBe(`{${t.prefix}}`);
    expect(Object.fromEntries(report.consumers.map((c) => [c.id, c.counts.completed]))).toEqual({
      'cl-a': 40,
      'cl-both': 60,
    });

    const reconcile = await runCli(['reconcile', '--verify'], { env: t.env });
    expect(reconcile.code, reconcile.stderr).toBe(0);
    expect((await ranPairs()).total).toBe(100);

    const port = await freePort();
    const board = startCli(['board', '--port', String(port)], { env: t.env });
    await board.waitForOutput((l) => l.json?.msg === 'board ready');
    const queues = (await (await fetch(`http://127.0.0.1:${port}/api/queues`)).json()) as {
      queues: Array<{ name: string }>;
    };
    expect(queues.queues.map((q) => q.name).sort()).toEqual(['cl-a', 'cl-both']);
    board.kill('SIGTERM');
    work.kill('SIGTERM');
    listen.kill('SIGTERM');
    for (const h of [board, work, listen]) expect((await h.waitForExit()).code).toBe(0);
  });

  it('--redis-cluster treats a single seed URL as a cluster', async () => {
    const seedOnly = { ...t.env, REDIS_URL: `redis://127.0.0.1:${cluster.ports[1]}` };
    const result = await runCli(['status', '--json', '--redis-cluster'], { env: seedOnly });
    expect(result.code, result.stderr).toBe(0);
    const report = JSON.parse(result.stdout) as { prefix: string; consumers: unknown[] };
    expect(report.prefix).toBe(`{${t.prefix}}`);
    expect(report.consumers).toHaveLength(2);
  });
});
