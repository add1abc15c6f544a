/**
 * Boundaries follow commit order, not id order. Transaction A stores a notification and stays
 * open; B stores one and commits; then a boundary is drawn (`listen --skip-playback` starts, or a
 * new consumer with startFrom 'now' registers); then A commits. A's row has the lower id but
 * committed after the boundary: the skip-playback listener bridges it and the new consumer gets
 * it. B's row committed before the boundary: the listener leaves it, the consumer never gets it.
 */
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type CliHandle } from '../support/cli.js';
import {
  RECORDER,
  migrateWithHandledTable,
  removeConsumerDirs,
  startListen,
  startWork,
  stopGracefully,
  writeConsumers,
} from '../support/delivery.js';
import { createTestEnv, type TestEnv } from '../support/env.js';
import { sleep, waitFor } from '../support/wait.js';

let t: TestEnv;
const handles: CliHandle[] = [];

beforeAll(async () => {
  t = createTestEnv();
  await migrateWithHandledTable(t);
});

afterAll(async () => {
  for (const h of handles) if (!h.exited) h.kill('SIGKILL');
  removeConsumerDirs();
  await t?.cleanup();
});

/** Opens transaction A with one stored notification; resolves with its id and a commit(). */
async function openTransaction(channel: string): Promise<{ id: string; commit(): Promise<void> }> {
  const client = new pg.Client({ connectionString: t.databaseUrl });
  await client.connect();
  await client.query('BEGIN');
  const { rows } = await client.query<{ id: string }>(
    `SELECT "${t.schema}".notify($1, '{"tx": "A"}')::text AS id`,
    [channel],
  );
  return {
    id: rows[0].id,
    async commit() {
      await client.query('COMMIT');
      await client.end();
    },
  };
}

async function notifyCommitted(channel: string): Promise<string> {
  const { rows } = await t.pool.query<{ id: string }>(
    `SELECT "${t.schema}".notify($1, '{"tx": "B"}')::text AS id`,
    [channel],
  );
  return rows[0].id;
}

async function bridgedAt(id: string): Promise<Date | null> {
  const { rows } = await t.pool.query<{ bridged_at: Date | null }>(
    `SELECT bridged_at FROM "${t.schema}".notifications WHERE id = $1`,
    [id],
  );
  return rows[0].bridged_at;
}

async function handledIds(consumer: string): Promise<string[]> {
  const { rows } = await t.pool.query<{ id: string }>(
    `SELECT notification_id::text AS id FROM "${t.schema}".handled WHERE consumer = $1 ORDER BY notification_id`,
    [consumer],
  );
  return rows.map((r) => r.id);
}

describe('commit-order boundaries', () => {
  it('listen --skip-playback bridges a row that committed after its start with a lower id', async () => {
    const a = await openTransaction('skipped');
    const b = await notifyCommitted('skipped');
    expect(BigInt(a.id)).toBeLessThan(BigInt(b));
    const listen = await startListen(t.env, ['--skip-playback', '--poll-interval', '0.2']);
    handles.push(listen);
    await a.commit();
    await waitFor(async () => (await bridgedAt(a.id)) !== null, {
      timeoutMs: 20_000,
      message: `row ${a.id} (committed after the start) bridged`,
    });
    // B committed before the start: left for reconcile or another listener.
    await sleep(1000);
    expect(await bridgedAt(b)).toBeNull();
    // Rows stored after the start keep flowing, on either side of the settled boundary.
    const c = await notifyCommitted('skipped');
    await waitFor(async () => (await bridgedAt(c)) !== null, {
      timeoutMs: 20_000,
      message: `row ${c} bridged`,
    });
    await stopGracefully(listen);
  });

  it("a new 'now' consumer gets a row that committed after it registered with a lower id", async () => {
    const listen = await startListen(t.env, ['--poll-interval', '0.2']);
    handles.push(listen);
    const a = await openTransaction('orders');
    const b = await notifyCommitted('orders');
    expect(BigInt(a.id)).toBeLessThan(BigInt(b));
    await waitFor(async () => (await bridgedAt(b)) !== null, {
      timeoutMs: 20_000,
      message: `row ${b} bridged before the consumer exists`,
    });
    const dir = writeConsumers({
      'fresh.mjs': `${RECORDER}
export default defineConsumer({ id: 'fresh', channels: ['orders'], startFrom: 'now',
  async handle(n) { await record('fresh', n); } });`,
    });
    const work = await startWork(t.env, dir, 1);
    handles.push(work);
    await a.commit();
    const after = await notifyCommitted('orders');
    await waitFor(async () => (await handledIds('fresh')).length >= 2, {
      timeoutMs: 30_000,
      message: "A's row and a later one handled by 'fresh'",
    });
    await sleep(1000);
    expect(await handledIds('fresh')).toEqual([a.id, after]);
    // The ledger view agrees: A is owed to 'fresh', B is not.
    const { rows } = await t.pool.query<{ id: string }>(
      `SELECT notification_id::text AS id FROM "${t.schema}".delivery_status
        WHERE consumer_id = 'fresh' ORDER BY notification_id`,
    );
    expect(rows.map((r) => r.id)).toEqual([a.id, after]);
    await stopGracefully(work);
    await stopGracefully(listen);
  });
});
