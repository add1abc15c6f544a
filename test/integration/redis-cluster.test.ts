/**
 * Redis Cluster, on a throwaway 3-node cluster given as comma-separated REDIS_URL nodes: every
 * consumer queue carries its own hash tag (`{<prefix>:<consumer>}`), so six consumers' queues
 * spread over the nodes while each queue's keys stay in one slot. listen + work deliver every
 * (consumer, notification) exactly once; status, board and `reconcile --verify` work on it; a node
 * restarted empty (no replicas, no persistence) loses its queues' jobs and `reconcile --verify`
 * brings back what was unfinished; and a deployment whose keys use the old single-slot layout
 * (`{<prefix>}:<consumer>:...`) moves to the new one as the README says.
 */
import { Cluster } from 'ioredis';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { runCli, startCli, type CliHandle } from '../support/cli.js';
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
import { sleep, waitFor } from '../support/wait.js';

let cluster: ThrowawayCluster;
let redis: Cluster;
let t: TestEnv;
/** Master port of each slot range, read once the cluster is up. */
let slotOwners: Array<{ from: number; to: number; port: number }> = [];

beforeAll(async () => {
  cluster = await startRedisCluster();
  t = createTestEnv({ extraEnv: {} });
  t.env.REDIS_URL = cluster.url;
  await migrateWithRanTable(t);
  redis = new Cluster(cluster.ports.map((port) => ({ host: '127.0.0.1', port })));
  await new Promise((resolve) => redis.once('ready', resolve));
  const slots = await redis.cluster('SLOTS');
  slotOwners = slots.map(([from, to, master]) => ({ from, to, port: master[1] }));
}, 60_000);
afterAll(async () => {
  redis?.disconnect();
  await t?.cleanup();
  await cluster?.destroy();
  removeOpsConsumers();
});

async function nodeOf(key: string): Promise<number> {
  const slot = (await redis.cluster('KEYSLOT', key)) as number;
  const owner = slotOwners.find((o) => slot >= o.from && slot <= o.to);
  if (!owner) throw new Error(`no owner for slot ${slot}`);
  return owner.port;
}

/**
 * Six consumer ids whose queues land on all three nodes: which node a queue lands on depends on
 * the test's random prefix, so pick from candidates rather than hope (six fixed ids all on one
 * node would happen in 0.4% of runs).
 */
async function spreadIds(stem: string): Promise<{ ids: string[]; nodeOfId: Map<string, number> }> {
  const perNode = new Map<number, string[]>();
  const nodeOfId = new Map<string, number>();
  for (let n = 1; [...perNode.values()].filter((l) => l.length >= 2).length < 3; n++) {
    const id = `${stem}${n}`;
    const port = await nodeOf(`{${t.prefix}:${id}}`);
    const list = perNode.get(port) ?? [];
    if (list.length < 2) {
      list.push(id);
      nodeOfId.set(id, port);
    }
    perNode.set(port, list);
  }
  return { ids: [...perNode.values()].flat(), nodeOfId };
}

async function ranPairs(consumerLike = '%'): Promise<{ total: number; distinct: number }> {
  const { rows } = await t.pool.query<{ total: number; distinct: number }>(
    `SELECT count(*)::int AS total, count(DISTINCT (consumer, notification_id))::int AS distinct
       FROM "${t.schema}".ran WHERE consumer LIKE $1`,
    [consumerLike],
  );
  return rows[0];
}

async function unbridgedNone(): Promise<boolean> {
  const { rowCount } = await t.pool.query(
    `SELECT 1 FROM "${t.schema}".notifications WHERE bridged_at IS NULL`,
  );
  return rowCount === 0;
}

/** Every key on every master, by node port. */
async function keysByNode(): Promise<Map<number, string[]>> {
  const out = new Map<number, string[]>();
  for (const node of redis.nodes('master')) {
    out.set(Number(node.options.port), await node.keys('*'));
  }
  return out;
}

async function stop(...handles: CliHandle[]): Promise<void> {
  for (const h of handles) h.kill('SIGTERM');
  for (const h of handles) expect((await h.waitForExit()).code).toBe(0);
}

let ids: string[] = [];
let nodeOfId = new Map<string, number>();
let consumersDir = '';
let work: CliHandle;
let listen: CliHandle;
/** (consumer, notification) pairs owed so far by the first two tests. */
let owed = 0;

describe('Redis Cluster', () => {
  it('spreads six consumer queues over the nodes and delivers every notification once', async () => {
    ({ ids, nodeOfId } = await spreadIds('sc-'));
    // Five one-at-a-time consumers (four on both channels) and a batch consumer on both.
    const [batchId, onlyA, ...both] = ids;
    consumersDir = writeOpsConsumers({
      'c.mjs': `${RAN}
export default [
${both
  .map(
    (id) => `  defineConsumer({ id: '${id}', channels: ['a', 'b'], concurrency: 4,
    async handle(n) { await ran('${id}', n, 'done'); } }),`,
  )
  .join('\n')}
  defineConsumer({ id: '${onlyA}', channels: ['a'], concurrency: 4, removeOnComplete: true,
    async handle(n) { await ran('${onlyA}', n, 'done'); } }),
  defineConsumer({ id: '${batchId}', channels: ['a', 'b'], batch: { size: 10, maxWaitMs: 100 },
    async handleBatch(ns) { for (const n of ns) await ran('${batchId}', n, 'done'); } }),
];`,
    });
    work = startCli(['work', '--consumers-dir', consumersDir], { env: t.env });
    await waitFor(() => logsWith(work, 'consumer registered; worker started').length === 6, {
      timeoutMs: 30_000,
      message: 'work ready on the cluster',
    });
    listen = await startListening(t.env);
    const a = await sendMany(t, 'a', 40);
    const b = await sendMany(t, 'b', 20);
    owed = a.length * 6 + b.length * 5;
    await waitFor(async () => (await ranPairs('sc-%')).total >= owed, {
      timeoutMs: 60_000,
      message: 'all handled',
    });
    await sleep(300);
    expect(await ranPairs('sc-%')).toEqual({ total: owed, distinct: owed });

    // Each queue's keys carry its own tag and live on the node of that tag's slot: all three.
    const byNode = await keysByNode();
    for (const [port, keys] of byNode) {
      for (const key of keys) {
        const id = /^\{[^:}]+:([^}]+)\}:([^:]+):/.exec(key);
        expect(id, key).not.toBeNull();
        expect(id?.[1], key).toBe(id?.[2]);
        expect(nodeOfId.get(id?.[1] ?? ''), key).toBe(port);
      }
    }
    expect([...byNode.values()].filter((keys) => keys.length > 0)).toHaveLength(3);
    expect(
      [...byNode.values()].flat().some((k) => k.startsWith(`{${t.prefix}}:`)),
      'no key in the old single-slot layout',
    ).toBe(false);

    const status = await runCli(['status', '--json'], { env: t.env });
    expect(status.code, status.stderr).toBe(0);
    const report = JSON.parse(status.stdout) as {
      prefix: string;
      consumers: Array<{ id: string; keyPrefix: string; counts: { completed: number } }>;
    };
    expect(report.prefix).toBe(t.prefix);
    const completed = Object.fromEntries(report.consumers.map((c) => [c.id, c.counts.completed]));
    for (const id of both) expect(completed[id], id).toBe(60);
    // removeOnComplete keeps no completed jobs; the batch consumer's jobs hold 10 each.
    expect(completed[onlyA]).toBe(0);
    expect(completed[batchId]).toBeGreaterThan(0);
    expect(completed[batchId]).toBeLessThan(60);
    for (const c of report.consumers) expect(c.keyPrefix).toBe(`{${t.prefix}:${c.id}}`);

    const reconcile = await runCli(['reconcile', '--verify'], { env: t.env });
    expect(reconcile.code, reconcile.stderr).toBe(0);
    expect(reconcile.stdout).toMatch(/enqueued 0\b/);
    await sleep(500);
    expect((await ranPairs('sc-%')).total).toBe(owed);

    const port = await freePort();
    const board = startCli(['board', '--port', String(port)], { env: t.env });
    await board.waitForOutput((l) => l.json?.msg === 'board ready');
    const queues = (await (await fetch(`http://127.0.0.1:${port}/api/queues`)).json()) as {
      queues: Array<{ name: string; counts: { completed: number } }>;
    };
    expect(queues.queues.map((q) => q.name).sort()).toEqual([...ids].sort());
    for (const q of queues.queues) expect(q.counts.completed).toBe(completed[q.name]);
    await stop(board);
  }, 120_000);

  it('after a node restarts empty, reconcile --verify brings back what it lost', async () => {
    // The node of two one-at-a-time consumers' queues (ids[2], ids[3], both on 'a' and 'b').
    const victim = nodeOfId.get(ids[2]) as number;
    expect(nodeOfId.get(ids[3])).toBe(victim);
    // Jobs waiting when the node dies are lost with it: stop the workers so that some wait.
    await stop(work);
    const waiting = await sendMany(t, 'a', 20);
    await waitFor(unbridgedNone, { timeoutMs: 20_000, message: 'bridged before the restart' });
    // The listener keeps running through the restart, with writes going on.
    const during = sendMany(t, 'a', 30);
    await sleep(100);
    await cluster.restartNode(victim, 1500);
    const sent = await during;
    const more = await sendMany(t, 'b', 10);
    owed += (waiting.length + sent.length) * 6 + more.length * 5;
    work = startCli(['work', '--consumers-dir', consumersDir], { env: t.env });
    await waitFor(() => logsWith(work, 'consumer registered; worker started').length === 6, {
      timeoutMs: 30_000,
      message: 'work ready again',
    });
    // Every row bridged first: verify takes the batch consumer's batch jobs as they are when it
    // starts, and a row packed into a batch job after that would look lost (and run twice).
    await waitFor(unbridgedNone, { timeoutMs: 20_000, message: 'bridged after the restart' });
    // The rows and the ledger know what the restarted node's queues owed.
    const reconcile = await runCli(['reconcile', '--verify'], { env: t.env });
    expect(reconcile.code, reconcile.stderr).toBe(0);
    const enqueued = Number(/enqueued (\d+)/.exec(reconcile.stdout)?.[1]);
    expect(enqueued).toBeGreaterThanOrEqual(waiting.length * 2);
    await waitFor(async () => (await ranPairs('sc-%')).distinct >= owed, {
      timeoutMs: 60_000,
      message: 'every delivery made after the restart',
    });
    await sleep(500);
    try {
      const pairs = await ranPairs('sc-%');
      const { rows: dups } = await t.pool.query(
        `SELECT consumer, notification_id, count(*)::int AS n FROM "${t.schema}".ran
          GROUP BY 1, 2 HAVING count(*) > 1 ORDER BY 1, 2`,
      );
      if (process.env.DEBUG_CLUSTER_TEST) console.log('duplicates', ids, dups, reconcile.stdout);
      expect(pairs.distinct).toBe(owed);
      // Exactly once for the five one-at-a-time consumers: the ledger settles what verify
      // re-adds for the restarted node's lost jobs, and what a listener batch rolled back during
      // the outage re-adds after its first jobs ran (removeOnComplete too). At least once (the
      // line above) for the batch consumer: such a batch may be packed into different batch jobs
      // on its retry, and both may run before either records its outcome (bridge/pack.ts).
      const strict = await Promise.all(ids.slice(1).map((id) => ranPairs(id)));
      for (const [i, p] of strict.entries()) expect(p.total, ids[i + 1]).toBe(p.distinct);
    } finally {
      await stop(work, listen);
    }
  }, 120_000);

  it('moves a deployment from the single-slot layout with reconcile --verify', async () => {
    // The old version on a cluster wrapped the whole prefix in one tag: `--prefix '{p}'` writes
    // exactly those keys, so it stands in for it.
    const oldEnv = { ...t.env, PGQ_PREFIX: `{${t.prefix}}` };
    const upIds = ['up-one', 'up-two'];
    const dir = writeOpsConsumers({
      'u.mjs': `${RAN}
export default [
${upIds
  .map(
    (id) => `  defineConsumer({ id: '${id}', channels: ['u'],
    async handle(n) { await ran('${id}', n, 'done'); } }),`,
  )
  .join('\n')}
];`,
    });
    const oldWork = startCli(['work', '--consumers-dir', dir], { env: oldEnv });
    await waitFor(() => logsWith(oldWork, 'consumer registered; worker started').length === 2, {
      timeoutMs: 30_000,
      message: 'old-layout work ready',
    });
    const oldListen = await startListening(oldEnv);
    await sendMany(t, 'u', 10);
    await waitFor(async () => (await ranPairs('up-%')).total >= 20, {
      timeoutMs: 30_000,
      message: 'handled in the old layout',
    });
    // The workers stop first; the listener bridges 15 more into old-layout queues nobody reads.
    await stop(oldWork);
    await sendMany(t, 'u', 15);
    await waitFor(async () => (await redis.llen(`{${t.prefix}}:up-one:wait`)) === 15, {
      timeoutMs: 30_000,
      message: 'bridged into the old layout',
    });
    await stop(oldListen);

    // The upgrade: the new layout, the new processes, then reconcile --verify once.
    const newWork = startCli(['work', '--consumers-dir', dir], { env: t.env });
    await waitFor(() => logsWith(newWork, 'consumer registered; worker started').length === 2, {
      timeoutMs: 30_000,
      message: 'new-layout work ready',
    });
    await waitFor(() => newWork.logs().some((l) => l.check === 'queue-layout'), {
      timeoutMs: 10_000,
      message: 'the worker points at the old queues',
    });
    const reconcile = await runCli(['reconcile', '--verify', '--consumers', upIds.join(',')], {
      env: t.env,
    });
    expect(reconcile.code, reconcile.stderr).toBe(0);
    expect(reconcile.stdout).toMatch(/enqueued 30\b/);
    await waitFor(async () => (await ranPairs('up-%')).total >= 50, {
      timeoutMs: 30_000,
      message: 'the unfinished ones handled in the new layout',
    });
    await sleep(500);
    expect(await ranPairs('up-%')).toEqual({ total: 50, distinct: 50 });
    await stop(newWork);
  }, 120_000);

  it('--redis-cluster treats a single seed URL as a cluster', async () => {
    const seedOnly = { ...t.env, REDIS_URL: `redis://127.0.0.1:${cluster.ports[1]}` };
    const result = await runCli(['status', '--json', '--redis-cluster'], { env: seedOnly });
    expect(result.code, result.stderr).toBe(0);
    const report = JSON.parse(result.stdout) as {
      consumers: Array<{ id: string; keyPrefix: string }>;
    };
    expect(report.consumers).toHaveLength(8);
    for (const c of report.consumers) expect(c.keyPrefix).toBe(`{${t.prefix}:${c.id}}`);
  });
});
