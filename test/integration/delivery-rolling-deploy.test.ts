/**
 * Issue 12, hole 5: a rolling deploy. Consumer `x`'s new version lists channels a and b, the old
 * one only a; both `work` processes run, then the old one restarts (and registers again), then
 * it goes away. Registration never removes a subscription, so every b notification reaches the
 * new version's handler (none runs in the old code, none is lost), and the old version's
 * registration neither drops b nor puts its own job options back.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createTestEnv, type TestEnv } from '../support/env.js';
import {
  hasMsg,
  migrateWithHandledTable,
  RECORDER,
  removeConsumerDirs,
  sendNotifications,
  startListen,
  startWork,
  stopGracefully,
  writeConsumers,
} from '../support/delivery.js';
import { waitFor } from '../support/wait.js';

let t: TestEnv;
beforeAll(async () => {
  t = createTestEnv();
  await migrateWithHandledTable(t);
});
afterAll(async () => {
  await t.cleanup();
  removeConsumerDirs();
});

function version(name: string, channels: string[], attempts: number): string {
  return writeConsumers({
    'x.mjs': `${RECORDER}
export default defineConsumer({ id: 'x', channels: ${JSON.stringify(channels)}, attempts: ${attempts},
  concurrency: 5, async handle(n) { await record('x', n, '${name}:' + n.channel); } });`,
  });
}

/** Handler runs per notification: id → the infos recorded ("v2:b", ...). */
async function runs(): Promise<Map<string, string[]>> {
  const { rows } = await t.pool.query<{ id: string; info: string }>(
    `SELECT notification_id::text AS id, info FROM "${t.schema}".handled ORDER BY seq`,
  );
  const byId = new Map<string, string[]>();
  for (const r of rows) byId.set(r.id, [...(byId.get(r.id) ?? []), r.info]);
  return byId;
}

/** The job options the listener applies to x's jobs. */
async function jobOptions(): Promise<Record<string, unknown>> {
  const { rows } = await t.pool.query<{ o: Record<string, unknown> }>(
    `SELECT job_options AS o FROM "${t.schema}".consumers WHERE id = 'x'`,
  );
  return rows[0].o;
}

describe('rolling deploy of a consumer', () => {
  it('an old version restarting beside the new one loses no notification of the new channel', async () => {
    const oldDir = version('v1', ['a'], 3);
    const newDir = version('v2', ['a', 'b'], 7);
    const listen = await startListen(t.env);
    let oldWork = await startWork(t.env, oldDir, 1);
    const newWork = await startWork(t.env, newDir, 1);
    expect(await jobOptions()).toMatchObject({ attempts: 7 });

    const sent: Map<string, string[]>[] = [];
    sent.push(await sendNotifications(t.databaseUrl, t.schema, 60, 4, (i) => 'ab'[i % 2]));

    // The old version restarts mid-deploy: its registration lists only a.
    await stopGracefully(oldWork);
    oldWork = await startWork(t.env, oldDir, 1);
    await oldWork.waitForOutput(hasMsg(/keeping subscriptions this definition does not list/));
    const kept = oldWork.logs().find(hasMsg(/keeping subscriptions/));
    expect(kept).toMatchObject({ consumer: 'x', keptChannels: ['b'] });
    expect(oldWork.logs().some(hasMsg(/older definition.*newer one stay in force/))).toBe(true);
    // The newest definition's options stay in force: no flap back to the old attempts.
    expect(await jobOptions()).toMatchObject({ attempts: 7 });

    sent.push(await sendNotifications(t.databaseUrl, t.schema, 60, 4, (i) => 'ab'[i % 2]));

    // The old version is gone for good; b keeps flowing.
    await stopGracefully(oldWork);
    sent.push(await sendNotifications(t.databaseUrl, t.schema, 40, 4, (i) => 'ab'[i % 2]));

    const ids = { a: [] as string[], b: [] as string[] };
    for (const batch of sent) {
      ids.a.push(...(batch.get('a') ?? []));
      ids.b.push(...(batch.get('b') ?? []));
    }
    expect(ids.b).toHaveLength(80);
    let seen = new Map<string, string[]>();
    await waitFor(
      async () => {
        seen = await runs();
        return [...ids.a, ...ids.b].every((id) => seen.has(id));
      },
      { timeoutMs: 45_000, message: 'every a and b notification handled' },
    ).catch((error: Error) => {
      const missing = ids.b.filter((id) => !seen.has(id));
      throw new Error(`${error.message}; b not handled: ${missing.length} (${missing.join(',')})`);
    });
    // Every b notification ran once, in the new version's code; a ran once, in either.
    for (const id of ids.b) expect(seen.get(id), `b ${id}`).toEqual(['v2:b']);
    for (const id of ids.a) {
      expect(seen.get(id), `a ${id}`).toHaveLength(1);
      expect(['v1:a', 'v2:a']).toContain(seen.get(id)![0]);
    }
    // The subscription to b is still there after the old version left.
    const { rows } = await t.pool.query<{ channel: string }>(
      `SELECT channel FROM "${t.schema}".subscriptions WHERE consumer_id = 'x' ORDER BY channel`,
    );
    expect(rows.map((r) => r.channel)).toEqual(['a', 'b']);
    await stopGracefully(newWork);
    await stopGracefully(listen);
    // No b job was failed or used up an attempt while it waited for the new version.
    const { rows: ledger } = await t.pool.query<{ status: string; attempts: number; n: number }>(
      `SELECT status, attempts, count(*)::int AS n FROM "${t.schema}".deliveries
        GROUP BY 1, 2 ORDER BY 1, 2`,
    );
    expect(ledger).toEqual([{ status: 'completed', attempts: 1, n: 160 }]);
  });
});
