/**
 * Issue 5: `work --processes N` supervises N worker processes: a killed one comes back and
 * nothing is lost (even a handler that exits the process mid-job: BullMQ's stalled-job check
 * hands the job out again), SIGTERM drains every child, --no-restart-on-failure ends the command
 * with a non-zero code, and --processes with --worker is a usage error.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { runCli, startCli, type CliHandle } from '../support/cli.js';
import { createTestEnv, type TestEnv } from '../support/env.js';
import {
  logsWith,
  migrateWithRanTable,
  RAN,
  ranCounts,
  removeOpsConsumers,
  sendMany,
  startListening,
  writeOpsConsumers,
} from '../support/ops.js';
import { waitFor } from '../support/wait.js';

let t: TestEnv;
beforeAll(async () => {
  t = createTestEnv();
  await migrateWithRanTable(t);
});
afterAll(async () => {
  await t.cleanup();
  removeOpsConsumers();
});

function childPids(work: CliHandle): number[] {
  return logsWith(work, 'worker process started').map((l) => l.childPid as number);
}

async function startSupervised(args: string[], processes: number): Promise<CliHandle> {
  const work = startCli(['work', '--processes', String(processes), ...args], { env: t.env });
  await waitFor(() => logsWith(work, 'consumer registered; worker started').length >= processes, {
    timeoutMs: 20_000,
    message: `${processes} worker processes ready`,
  });
  return work;
}

describe('work --processes', () => {
  it('refuses --processes with --worker (exit 2)', async () => {
    const result = await runCli(['work', '--processes', '2', '--worker'], { env: t.env });
    expect(result.code).toBe(2);
    expect(result.stderr).toMatch(/--processes and --worker exclude each other/);
  });

  it('restarts a killed child; a handler that exits the process loses no job', async () => {
    const dir = writeOpsConsumers({
      'c.mjs': `${RAN}
export default defineConsumer({ id: 'sup', channels: ['sup'], concurrency: 2,
  async handle(n) {
    // A "crash" notification kills its process mid-job, once. (A stalled job keeps its attempt
    // number, so the table says whether this is the first run.)
    if (n.payload.crash) {
      const seen = await pool.query('SELECT 1 FROM ' + table + " WHERE notification_id = $1 AND phase = 'crash'", [n.id]);
      if (seen.rowCount === 0) { await ran('sup', n, 'crash'); process.exit(1); }
    }
    await ran('sup', n, 'done');
  } });`,
    });
    const work = await startSupervised(['--consumers-dir', dir], 3);
    const listen = await startListening(t.env);
    const first = await sendMany(t, 'sup', 10);
    await waitFor(async () => (await ranCounts(t, 'done')).size === 10, {
      message: 'first 10 handled',
    });

    // kill -9 one child: it is restarted with a new pid.
    const victim = childPids(work)[0];
    process.kill(victim, 'SIGKILL');
    await work.waitForOutput((l) => l.json?.msg === 'worker process crashed; restarting');
    await waitFor(() => childPids(work).length === 4, { message: 'replacement forked' });
    expect(childPids(work)).not.toContain(undefined);
    expect(childPids(work)[3]).not.toBe(victim);

    // A handler that exits its process: the job comes back after the stalled-job check.
    const [crashId] = await sendMany(t, 'sup', 1, () => ({ crash: true }));
    // Sent once that process is gone, so no other job was in flight in it: a job in flight in a
    // dying process runs again after the stalled check (at least once), which is not tested here.
    await waitFor(() => logsWith(work, 'worker process crashed; restarting').length === 2, {
      message: 'the handler exited its process',
    });
    const later = await sendMany(t, 'sup', 10);
    await waitFor(async () => (await ranCounts(t, 'done')).size === 21, {
      timeoutMs: 90_000,
      intervalMs: 500,
      message: 'all 21 handled, the crashed one after the stalled check',
    });
    const done = await ranCounts(t, 'done');
    for (const id of [...first, crashId, ...later]) expect(done.get(id), id).toBe(1);
    expect((await ranCounts(t, 'crash')).get(crashId)).toBe(1);
    expect(logsWith(work, 'worker process crashed; restarting').length).toBe(2);

    work.kill('SIGTERM');
    expect((await work.waitForExit(40_000)).code).toBe(0);
    listen.kill('SIGTERM');
    await listen.waitForExit();
  }, 150_000);

  it('drains every child on SIGTERM: in-flight jobs finish, exit 0', async () => {
    const dir = writeOpsConsumers({
      'c.mjs': `${RAN}
export default defineConsumer({ id: 'slow', channels: ['slow'], concurrency: 2,
  async handle(n) { await ran('slow', n, 'start'); await sleep(1500); await ran('slow', n, 'end'); } });`,
    });
    const work = await startSupervised(['--consumers-dir', dir], 2);
    const listen = await startListening(t.env);
    const ids = await sendMany(t, 'slow', 4);
    await waitFor(async () => (await ranCounts(t, 'start')).size === 4, {
      message: 'four jobs in flight',
    });
    work.kill('SIGTERM');
    expect((await work.waitForExit(30_000)).code).toBe(0);
    const ended = await ranCounts(t, 'end');
    for (const id of ids) expect(ended.get(id), id).toBe(1);
    const drained = logsWith(work, 'worker process drained and exited');
    expect(drained.map((l) => l.code)).toEqual([0, 0]);
    listen.kill('SIGTERM');
    await listen.waitForExit();
  });

  it('--no-restart-on-failure: a crashed child ends the command with a non-zero code', async () => {
    const dir = writeOpsConsumers({
      'c.mjs': `${RAN}
export default defineConsumer({ id: 'nr', channels: ['nr'], handle: () => undefined });`,
    });
    const work = await startSupervised(['--consumers-dir', dir, '--no-restart-on-failure'], 2);
    process.kill(childPids(work)[1], 'SIGKILL');
    const exit = await work.waitForExit(30_000);
    expect(exit.code).not.toBe(0);
    expect(exit.code).not.toBeNull();
    expect(logsWith(work, 'worker process started')).toHaveLength(2);
    expect(logsWith(work, 'worker process drained and exited')).toHaveLength(1);
  });
});
