/**
 * Ordering keys as writers give them (issue 13): `notify(..., { key })`, the SQL overload
 * `notify(channel, payload, key)`, typed channels, the automatic key of trigger payloads, the
 * 512-byte limit on both paths, and the commit-order lock: a second same-key writer takes its id
 * only after the first committed, while another key does not wait. The key reaches the handler
 * as `n.key` through a real listener and worker.
 */
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  addTrigger,
  createListener,
  createWorker,
  defineChannel,
  migrate,
  notify,
  type Notification,
} from '../../src/index.js';
import { runCli } from '../support/cli.js';
import { apiSettings, createTestEnv, type TestEnv } from '../support/env.js';
import { sleep, waitFor } from '../support/wait.js';

let t: TestEnv;
let s: string;

beforeAll(async () => {
  t = createTestEnv();
  s = `"${t.schema}"`;
  await migrate({ db: t.pool, schema: t.schema });
  await t.pool.query(`
    CREATE TABLE ${s}.users (id int PRIMARY KEY, name text);
    CREATE TABLE ${s}.tags (slug text PRIMARY KEY, label text);
    CREATE TABLE ${s}.line_items (order_id int, line text, qty int, PRIMARY KEY (order_id, line));
    CREATE TABLE ${s}.no_pk (a int);
    CREATE TABLE ${s}.by_hand (id int PRIMARY KEY, v int);
    CREATE TABLE ${s}.long_keys (k text PRIMARY KEY);
  `);
  for (const table of ['users', 'tags', 'line_items', 'no_pk', 'long_keys']) {
    await addTrigger(t.pool, `${t.schema}.${table}`, { schema: t.schema, channel: 'changes' });
  }
  // Created without the key columns as arguments: the function reads them from pg_index.
  await t.pool.query(
    `CREATE TRIGGER by_hand_changes AFTER INSERT OR UPDATE OR DELETE ON ${s}.by_hand
       FOR EACH ROW EXECUTE FUNCTION ${s}.notify_data_change('changes')`,
  );
});

afterAll(async () => {
  await t.cleanup();
});

async function keyOf(id: string): Promise<string | null> {
  const { rows } = await t.pool.query<{ key: string | null }>(
    `SELECT key FROM ${s}.notifications WHERE id = $1`,
    [id],
  );
  expect(rows).toHaveLength(1);
  return rows[0].key;
}

/** Keys of the trigger notifications written since `afterId`, in id order. */
async function keysSince(afterId: string): Promise<(string | null)[]> {
  const { rows } = await t.pool.query<{ key: string | null }>(
    `SELECT key FROM ${s}.notifications WHERE id > $1 ORDER BY id`,
    [afterId],
  );
  return rows.map((r) => r.key);
}

async function maxId(): Promise<string> {
  const { rows } = await t.pool.query<{ id: string }>(
    `SELECT coalesce(max(id), 0)::text AS id FROM ${s}.notifications`,
  );
  return rows[0].id;
}

describe('keys given by the writer', () => {
  it('stores the key of notify(), of the SQL overload and of a typed channel; none without one', async () => {
    const opts = { schema: t.schema };
    expect(await keyOf(await notify(t.pool, 'orders', { a: 1 }, { ...opts, key: 'order-7' }))).toBe(
      'order-7',
    );
    expect(await keyOf(await notify(t.pool, 'orders', { a: 1 }, opts))).toBeNull();
    const { rows } = await t.pool.query<{ id: string }>(
      `SELECT ${s}.notify('orders', '{"b":2}', 'order-8') AS id`,
    );
    expect(await keyOf(rows[0].id)).toBe('order-8');
    const { rows: nullKey } = await t.pool.query<{ id: string }>(
      `SELECT ${s}.notify('orders', '{"b":2}', NULL) AS id`,
    );
    expect(await keyOf(nullKey[0].id)).toBeNull();
    const orders = defineChannel<{ id: number }>('orders');
    expect(await keyOf(await orders.notify(t.pool, { id: 3 }, { ...opts, key: 'order-3' }))).toBe(
      'order-3',
    );
  });

  it('accepts 512 bytes and refuses 513, from the API and from SQL, counting bytes not characters', async () => {
    const opts = { schema: t.schema };
    const max = 'k'.repeat(512);
    expect(await keyOf(await notify(t.pool, 'orders', 1, { ...opts, key: max }))).toBe(max);
    // 171 euro signs are 171 characters but 513 bytes.
    for (const key of ['k'.repeat(513), '€'.repeat(171)]) {
      await expect(notify(t.pool, 'orders', 1, { ...opts, key })).rejects.toMatchObject({
        code: 'PGQ_INVALID_KEY',
        message: 'ordering key too long (513 bytes): keys may have at most 512 bytes',
      });
      await expect(
        t.pool.query(`SELECT ${s}.notify('orders', '1', $1)`, [key]),
      ).rejects.toMatchObject({
        code: '22023',
        message: 'pgq-bridge: ordering key too long (513 bytes): keys may have at most 512 bytes',
      });
    }
    await expect(
      notify(t.pool, 'orders', 1, { ...opts, key: 42 as unknown as string }),
    ).rejects.toMatchObject({ code: 'PGQ_INVALID_KEY' });
    await expect(notify(t.pool, 'orders', 1, { ...opts, key: 'a\u0000b' })).rejects.toMatchObject({
      code: 'PGQ_INVALID_KEY',
    });
  });

  it('the CLI takes --key and refuses a long one as a usage error (exit 2)', async () => {
    const ok = await runCli(['notify', 'orders', '{"c":1}', '--key', 'cli-key'], { env: t.env });
    expect(ok.code, ok.stderr).toBe(0);
    expect(await keyOf(ok.stdout.trim())).toBe('cli-key');
    const bad = await runCli(['notify', 'orders', '{}', '--key', 'x'.repeat(600)], { env: t.env });
    expect(bad.code).toBe(2);
    expect(bad.stderr).toContain('ordering key too long (600 bytes)');
  });
});

describe('keys of trigger payloads', () => {
  it('is <schema>.<table>:<primary key as JSON>, for single, text, composite and hand-made triggers', async () => {
    const from = await maxId();
    await t.pool.query(`INSERT INTO ${s}.users VALUES (7, 'ann')`);
    await t.pool.query(`UPDATE ${s}.users SET name = 'bob' WHERE id = 7`);
    await t.pool.query(`DELETE FROM ${s}.users WHERE id = 7`);
    await t.pool.query(`INSERT INTO ${s}.tags VALUES ('u-7', 'x')`);
    await t.pool.query(`INSERT INTO ${s}.line_items VALUES (12, 'b', 1)`);
    await t.pool.query(`DELETE FROM ${s}.line_items`);
    await t.pool.query(`INSERT INTO ${s}.no_pk VALUES (1)`);
    await t.pool.query(`INSERT INTO ${s}.by_hand VALUES (5, 1)`);
    expect(await keysSince(from)).toEqual([
      `${t.schema}.users:7`,
      `${t.schema}.users:7`,
      `${t.schema}.users:7`,
      `${t.schema}.tags:"u-7"`,
      `${t.schema}.line_items:[12, "b"]`,
      `${t.schema}.line_items:[12, "b"]`,
      null,
      `${t.schema}.by_hand:5`,
    ]);
  });

  it('names a primary key too long for a key by its md5 instead of refusing the write', async () => {
    const from = await maxId();
    const long = 'p'.repeat(600);
    await t.pool.query(`INSERT INTO ${s}.long_keys VALUES ($1)`, [long]);
    const { rows } = await t.pool.query<{ md5: string }>(`SELECT md5($1) AS md5`, [
      JSON.stringify(long),
    ]);
    expect(await keysSince(from)).toEqual([`${t.schema}.long_keys:md5:${rows[0].md5}`]);
  });
});

describe('commit order per key', () => {
  it('a second writer of a key takes its id only after the first committed; another key does not wait', async () => {
    const a = new pg.Client({ connectionString: t.databaseUrl });
    const b = new pg.Client({ connectionString: t.databaseUrl });
    const c = new pg.Client({ connectionString: t.databaseUrl });
    await Promise.all([a.connect(), b.connect(), c.connect()]);
    try {
      await a.query('BEGIN');
      const first = await notify(a, 'orders', 'first', { schema: t.schema, key: 'k-1' });
      await b.query('BEGIN');
      let secondId: string | undefined;
      const second = notify(b, 'orders', 'second', { schema: t.schema, key: 'k-1' }).then(
        (id) => (secondId = id),
      );
      // Another key goes through while the first transaction is still open.
      const other = await notify(c, 'orders', 'other', { schema: t.schema, key: 'k-2' });
      expect(BigInt(other)).toBeGreaterThan(BigInt(first));
      await sleep(300);
      expect(secondId).toBeUndefined();
      await a.query('COMMIT');
      await second;
      await b.query('COMMIT');
      // Taken after the first commit: greater than every id handed out before it.
      expect(BigInt(secondId!)).toBeGreaterThan(BigInt(other));
    } finally {
      await Promise.all([a.end(), b.end(), c.end()]);
    }
  });
});

describe('the key reaches the handler', () => {
  it('as n.key, through a real listener and worker (null for unkeyed notifications)', async () => {
    const seen = new Map<string, string | null>();
    const settings = apiSettings(t);
    const worker = createWorker({
      settings,
      consumers: [
        {
          id: 'keys',
          channels: ['keyed'],
          handle: (n: Notification) => {
            seen.set(n.id, n.key);
          },
        },
      ],
    });
    await worker.start();
    const listener = createListener({ settings });
    await listener.start();
    try {
      const keyed = await notify(t.pool, 'keyed', 1, { schema: t.schema, key: 'user:1' });
      const plain = await notify(t.pool, 'keyed', 2, { schema: t.schema });
      await waitFor(() => seen.size >= 2, { timeoutMs: 20_000, message: 'both handled' });
      expect(seen.get(keyed)).toBe('user:1');
      expect(seen.get(plain)).toBeNull();
    } finally {
      await listener.stop();
      await worker.close();
    }
  });
});
