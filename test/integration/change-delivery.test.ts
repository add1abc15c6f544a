/**
 * Issue 4, end to end: triggers installed with the CLI, real `listen` and `work` processes, and a
 * consumer that records what its handler saw (`n.change`, `n.context`, helpers).
 */
import { randomBytes } from 'node:crypto';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { notify, withContext } from '../../src/index.js';
import { runCli } from '../support/cli.js';
import {
  migrateWithReceived,
  q,
  received,
  recorderConsumer,
  removeTempDirs,
  startListen,
  startWork,
  triggersCli,
  waitForReceived,
  writeTempDir,
} from '../support/change.js';
import { createTestEnv, type TestEnv } from '../support/env.js';

const SALES = 'Sales';
const ORDER_ITEMS = 'Order Items';
const CHANNELS = ['items', 'tracked', 'orders', 'evil', 'docs', 'shipments', 'plain'];

let t: TestEnv;
let s: string;
/** A table name that tries to end the statement and drop another table. */
let evilName: string;

async function notificationsOn(channel: string): Promise<number> {
  const { rows } = await t.pool.query<{ n: number }>(
    `SELECT count(*)::int AS n FROM ${s}.notifications WHERE channel = $1`,
    [channel],
  );
  return rows[0].n;
}

beforeAll(async () => {
  t = createTestEnv();
  s = q(t.schema);
  evilName = `x"; DROP TABLE ${s}.victim; --`;
  await migrateWithReceived(t);
  await t.pool.query(`DROP SCHEMA IF EXISTS ${q(SALES)} CASCADE`);
  await t.pool.query(`
    CREATE TABLE ${s}.items (id int PRIMARY KEY, name text, status text);
    CREATE TABLE ${s}.tracked (id int PRIMARY KEY, status text, note text);
    CREATE TABLE ${s}.docs (id int PRIMARY KEY, body text);
    CREATE TABLE ${s}.shipments (id int PRIMARY KEY, status text);
    CREATE TABLE ${s}.victim (id int);
    CREATE TABLE ${s}.${q(evilName)} (id int PRIMARY KEY);
    CREATE SCHEMA ${q(SALES)};
    CREATE TABLE ${q(SALES)}.${q(ORDER_ITEMS)} (
      order_id int, line int, qty int, PRIMARY KEY (order_id, line));
  `);
  await triggersCli(t.env, ['add', `${t.schema}.items`, '--channel', 'items']);
  await triggersCli(t.env, [
    'add',
    `${t.schema}.tracked`,
    '--channel',
    'tracked',
    '--columns',
    'status',
  ]);
  await triggersCli(t.env, ['add', `"${SALES}"."${ORDER_ITEMS}"`, '--channel', 'orders']);
  await triggersCli(t.env, ['add', `${t.schema}.${q(evilName)}`, '--channel', 'evil']);
  await triggersCli(t.env, ['add', `${t.schema}.docs`, '--channel', 'docs']);
  await triggersCli(t.env, [
    'add',
    `${t.schema}.shipments`,
    '--channel',
    'shipments',
    '--events',
    'update',
    '--when',
    `NEW.status = 'shipped' AND OLD.status IS DISTINCT FROM NEW.status`,
  ]);
  const dir = writeTempDir({ 'recorder.mjs': recorderConsumer('recorder', CHANNELS) });
  await startWork(t.env, dir);
  await startListen(t.env);
});

afterAll(async () => {
  await t.pool.query(`DROP SCHEMA IF EXISTS ${q(SALES)} CASCADE`).catch(() => undefined);
  await t.cleanup();
  removeTempDirs();
});

describe('row changes reach a consumer', () => {
  it('INSERT, UPDATE and DELETE arrive with the right change fields', async () => {
    await t.pool.query(`INSERT INTO ${s}.items VALUES (1, 'apple', 'new')`);
    await t.pool.query(`UPDATE ${s}.items SET status = 'ripe' WHERE id = 1`);
    await t.pool.query(`DELETE FROM ${s}.items WHERE id = 1`);
    const rows = await waitForReceived(t.pool, t.schema, 'items', 3);
    expect(rows).toHaveLength(3);
    const [ins, upd, del] = rows;
    const base = { schema: t.schema, table: 'items' };
    const apple = { id: 1, name: 'apple', status: 'new' };
    const ripe = { ...apple, status: 'ripe' };
    expect(ins.change).toEqual({ ...base, action: 'INSERT', old: null, new: apple, recordId: 1 });
    expect(ins.record_id).toBe(1);
    expect(ins.flags).toBe('I');
    expect(ins.changed).toEqual([]);
    expect(upd.change).toEqual({ ...base, action: 'UPDATE', old: apple, new: ripe, recordId: 1 });
    expect(upd.flags).toBe('U');
    expect(upd.changed).toEqual(['status']);
    expect(del.change).toEqual({ ...base, action: 'DELETE', old: ripe, new: null, recordId: 1 });
    expect(del.flags).toBe('D');
    // The payload is SPEC's object (plus the key columns the trigger was installed with).
    expect(ins.payload).toEqual({
      ...base,
      action: 'INSERT',
      old: null,
      new: apple,
      context: null,
      primary_key: ['id'],
    });
  });

  it('with --columns, an UPDATE of an unlisted column does not fire', async () => {
    await t.pool.query(`INSERT INTO ${s}.tracked VALUES (1, 'open', 'a')`);
    await t.pool.query(`UPDATE ${s}.tracked SET note = 'b' WHERE id = 1`);
    // In the SET list but unchanged: `UPDATE OF` would fire here; the trigger must not.
    await t.pool.query(`UPDATE ${s}.tracked SET status = 'open', note = 'c' WHERE id = 1`);
    await t.pool.query(`UPDATE ${s}.tracked SET status = 'closed' WHERE id = 1`);
    const rows = await waitForReceived(t.pool, t.schema, 'tracked', 2);
    expect(rows.map((r) => r.change?.action)).toEqual(['INSERT', 'UPDATE']);
    expect(rows[1].change?.old).toEqual({ id: 1, status: 'open', note: 'c' });
    expect(rows[1].change?.new).toEqual({ id: 1, status: 'closed', note: 'c' });
    expect(rows[1].changed).toEqual(['status']);
    expect(await notificationsOn('tracked')).toBe(2);
    // DELETE still fires: --columns only narrows UPDATE.
    await t.pool.query(`DELETE FROM ${s}.tracked WHERE id = 1`);
    const after = await waitForReceived(t.pool, t.schema, 'tracked', 3);
    expect(after[2].change?.action).toBe('DELETE');
  });

  it('--when fires only when its condition holds', async () => {
    await t.pool.query(`INSERT INTO ${s}.shipments VALUES (1, 'packed'), (2, 'packed')`);
    await t.pool.query(`UPDATE ${s}.shipments SET status = 'delayed' WHERE id = 1`);
    await t.pool.query(`UPDATE ${s}.shipments SET status = 'shipped' WHERE id = 2`);
    // Already shipped: the condition (a status change to shipped) does not hold again.
    await t.pool.query(`UPDATE ${s}.shipments SET status = 'shipped' WHERE id = 2`);
    await t.pool.query(`UPDATE ${s}.shipments SET status = 'shipped' WHERE id = 1`);
    const rows = await waitForReceived(t.pool, t.schema, 'shipments', 2);
    expect(rows.map((r) => [r.record_id, r.change?.old?.status, r.change?.new?.status])).toEqual([
      [2, 'packed', 'shipped'],
      [1, 'delayed', 'shipped'],
    ]);
    expect(await notificationsOn('shipments')).toBe(2);
  });

  it('a mixed-case table in a mixed-case schema works, with a composite recordId', async () => {
    const table = `${q(SALES)}.${q(ORDER_ITEMS)}`;
    await t.pool.query(`INSERT INTO ${table} VALUES (7, 1, 3)`);
    await t.pool.query(`UPDATE ${table} SET qty = 4 WHERE order_id = 7 AND line = 1`);
    const rows = await waitForReceived(t.pool, t.schema, 'orders', 2);
    expect(rows[0].change).toMatchObject({ schema: SALES, table: ORDER_ITEMS, action: 'INSERT' });
    expect(rows[0].record_id).toEqual({ order_id: 7, line: 1 });
    expect(rows[1].changed).toEqual(['qty']);
  });

  it('a table name carrying SQL is quoted harmlessly (or refused when unquoted)', async () => {
    await t.pool.query(`INSERT INTO ${s}.${q(evilName)} VALUES (5)`);
    const rows = await waitForReceived(t.pool, t.schema, 'evil', 1);
    expect(rows[0].change).toMatchObject({ table: evilName, action: 'INSERT', new: { id: 5 } });
    const refused = await runCli(['triggers', 'add', `${t.schema}.${evilName}`], { env: t.env });
    expect(refused.code).toBe(2);
    expect(refused.stderr).toMatch(/invalid table name/);
    const victim = await t.pool.query(`SELECT to_regclass($1) AS t`, [`${s}.victim`]);
    expect(victim.rows[0].t).not.toBeNull();
  });

  it('a row with a 2 MB text column is delivered intact', async () => {
    const body = randomBytes(1024 * 1024).toString('hex'); // 2 MiB of text
    await t.pool.query(`INSERT INTO ${s}.docs VALUES (1, $1)`, [body]);
    const [row] = await waitForReceived(t.pool, t.schema, 'docs', 1, 30_000);
    expect(row.record_id).toBe(1);
    const delivered = (row.change?.new as { body: string }).body;
    expect(delivered.length).toBe(body.length);
    expect(delivered === body).toBe(true);
  });

  it('withContext reaches the handler for notify() and trigger payloads, and does not leak', async () => {
    const client = new pg.Client({ connectionString: t.databaseUrl });
    await client.connect();
    try {
      const context = { userId: 42, requestId: 'req-1' };
      await withContext(client, context, async (tx) => {
        await tx.query(`INSERT INTO ${s}.items VALUES (10, 'pear', 'new')`);
        await notify(tx, 'plain', { hello: 'world' }, { schema: t.schema });
      });
      // The next transactions on the same connection carry no context.
      await client.query(`INSERT INTO ${s}.items VALUES (11, 'plum', 'new')`);
      await client.query('BEGIN');
      await notify(client, 'plain', { hello: 'again' }, { schema: t.schema });
      await client.query('COMMIT');
    } finally {
      await client.end();
    }
    const plain = await waitForReceived(t.pool, t.schema, 'plain', 2);
    expect(plain.map((r) => [r.payload, r.context])).toEqual([
      [{ hello: 'world' }, { userId: 42, requestId: 'req-1' }],
      [{ hello: 'again' }, null],
    ]);
    const items = (await waitForReceived(t.pool, t.schema, 'items', 5)).filter(
      (r) => (r.record_id as number) >= 10,
    );
    expect(items.map((r) => [r.record_id, r.context])).toEqual([
      [10, { userId: 42, requestId: 'req-1' }],
      [11, null],
    ]);
    expect((items[0].payload as { context: unknown }).context).toEqual({
      userId: 42,
      requestId: 'req-1',
    });
    expect(await received(t.pool, t.schema, 'items')).toHaveLength(5);
  });
});
