/**
 * A throwaway 3-node Redis Cluster on loopback ports, for the Redis Cluster tests: three
 * `redis-server --cluster-enabled yes` (no persistence) joined by `redis-cli --cluster create`.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { closeSync, openSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Redis } from 'ioredis';
import { findBinary, freePort, redisPing } from './servers.js';
import { waitFor } from './wait.js';

export interface ThrowawayCluster {
  ports: number[];
  /** `redis://127.0.0.1:P1,redis://127.0.0.1:P2,redis://127.0.0.1:P3` */
  url: string;
  /**
   * Kills one node (SIGKILL) and starts it again on its port with its cluster config file:
   * it rejoins with its slots but empty (no persistence), as a restarted node without replicas
   * does. Resolves once every node reports `cluster_state:ok` again; `downMs` is how long the
   * node stays down before the restart.
   */
  restartNode(port: number, downMs?: number): Promise<void>;
  destroy(): Promise<void>;
}

function exited(child: ChildProcess): Promise<unknown> {
  return child.exitCode !== null || child.signalCode !== null
    ? Promise.resolve()
    : new Promise((resolve) => child.once('exit', resolve));
}

async function clusterStates(ports: number[]): Promise<string[]> {
  return Promise.all(
    ports.map(async (port) => {
      const r = new Redis(port, '127.0.0.1', { lazyConnect: true, maxRetriesPerRequest: 0 });
      try {
        await r.connect();
        return String(await r.cluster('INFO'));
      } catch {
        return 'unreachable';
      } finally {
        r.disconnect();
      }
    }),
  );
}

async function waitForClusterOk(ports: number[]): Promise<void> {
  await waitFor(
    async () => (await clusterStates(ports)).every((info) => info.includes('cluster_state:ok')),
    { timeoutMs: 20_000, message: 'cluster_state:ok on every node' },
  );
}

function run(file: string, args: string[]): Promise<string> {
  return new Promise((resolve, reject) => {
    const child = spawn(file, args, { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    child.stdout.on('data', (d: Buffer) => (out += d.toString()));
    child.stderr.on('data', (d: Buffer) => (out += d.toString()));
    child.once('error', reject);
    child.once('close', (code) =>
      code === 0 ? resolve(out) : reject(new Error(`${file} ${args.join(' ')}: ${out}`)),
    );
  });
}

/** Starts three cluster-enabled redis-servers and creates a cluster of them (no replicas). */
export async function startRedisCluster(): Promise<ThrowawayCluster> {
  const server = findBinary('redis-server');
  const cli = findBinary('redis-cli');
  if (!server || !cli) throw new Error('redis-server and redis-cli are needed for a Redis Cluster');
  const dir = await mkdtemp(join(tmpdir(), 'pgq-test-cluster-'));
  const ports: number[] = [];
  while (ports.length < 3) {
    const port = await freePort();
    // The cluster bus listens on port + 10000: both must be free.
    if (port + 10000 < 65536 && !ports.includes(port)) ports.push(port);
  }
  const children = new Map<number, ChildProcess>();
  const spawnNode = (port: number): void => {
    const fd = openSync(join(dir, `redis-${port}.log`), 'a');
    const child = spawn(
      server,
      [
        '--port',
        String(port),
        '--bind',
        '127.0.0.1',
        '--cluster-enabled',
        'yes',
        '--cluster-config-file',
        join(dir, `nodes-${port}.conf`),
        '--save',
        '',
        '--appendonly',
        'no',
        '--maxmemory-policy',
        'noeviction',
        '--dir',
        dir,
        '--daemonize',
        'no',
      ],
      { stdio: ['ignore', fd, fd] },
    );
    closeSync(fd);
    children.set(port, child);
  };
  const destroy = async () => {
    for (const child of children.values()) child.kill('SIGKILL');
    await Promise.all([...children.values()].map(exited));
    await rm(dir, { recursive: true, force: true });
  };
  try {
    for (const port of ports) spawnNode(port);
    await waitFor(
      async () => {
        await Promise.all(ports.map((p) => redisPing(p)));
        return true;
      },
      { timeoutMs: 15_000, message: 'cluster nodes answering' },
    );
    await run(cli, [
      '--cluster',
      'create',
      ...ports.map((p) => `127.0.0.1:${p}`),
      '--cluster-replicas',
      '0',
      '--cluster-yes',
    ]);
    await waitForClusterOk(ports);
  } catch (error) {
    await destroy();
    throw error;
  }
  return {
    ports,
    url: ports.map((p) => `redis://127.0.0.1:${p}`).join(','),
    async restartNode(port, downMs = 1000) {
      const child = children.get(port);
      if (!child) throw new Error(`no cluster node on port ${port}`);
      child.kill('SIGKILL');
      await exited(child);
      await new Promise((resolve) => setTimeout(resolve, downMs));
      spawnNode(port);
      await waitFor(
        async () => {
          await redisPing(port);
          return true;
        },
        { timeoutMs: 15_000, message: `node ${port} answering again` },
      );
      await waitForClusterOk(ports);
    },
    destroy,
  };
}
