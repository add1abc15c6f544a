/**
 * Issue 4, API level: `withContext` / `setContext` (what is stored, and that it never leaks into
 * a connection's next transaction) and typed channels (validators reject at notify() time).
 */
import { execFile } from 'node:child_process';
import { join, relative } from 'node:path';
import { promisify } from 'node:util';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  addTrigger,
  defineChannel,
  migrate,
  notify,
  PgqError,
  setContext,
  withContext,
  type StandardSchemaV1,
} from '../../src/index.js';
import { REPO_ROOT } from '../support/cli.js';
import { q, removeTempDirs, writeTempDir } from '../support/change.js';
import { createTestEnv, type TestEnv } from '../support/env.js';

let t: TestEnv;
let s: string;
let client: pg.Client;

interface Stored {
  channel: string;
  payload: Record<string, unknown>;
  context: Record<string, unknown> | null;
}

/** Notifications stored after `afterId`, in order. */
async function storedAfter(afterId: string): Promise<Stored[]> {
  const { rows } = await t.pool.query<Stored>(
    `SELECT channel, payload, context FROM ${s}.notifications WHERE id > $1 ORDER BY id`,
    [afterId],
  );
  return rows;
}

async function lastId(): Promise<string> {
  const { rows } = await t.pool.query<{ id: string }>(
    `SELECT coalesce(max(id), 0)::text AS id FROM ${s}.notifications`,
  );
  return rows[0].id;
}

beforeAll(async () => {
  t = createTestEnv();
  s = q(t.schema);
  await migrate({ db: t.pool, schema: t.schema });
  await t.pool.query(`CREATE TABLE ${s}.users (id int PRIMARY KEY, email text)`);
  await addTrigger(
    t.pool,
    { schema: t.schema, name: 'users' },
    {
      schema: t.schema,
      channel: 'users',
    },
  );
  client = new pg.Client({ connectionString: t.databaseUrl });
  await client.connect();
});

afterAll(async () => {
  await client.end();
  await t.cleanup();
  removeTempDirs();
});

describe('withContext', () => {
  it('stores the context with notify() and trigger rows, and it ends with the transaction', async () => {
    const from = await lastId();
    const context = { userId: 7, requestId: 'r-7' };
    const result = await withContext(client, context, async (tx) => {
      await tx.query(`INSERT INTO ${s}.users VALUES (1, 'a@example.com')`);
      await notify(tx, 'audit', { step: 1 }, { schema: t.schema });
      return 'done';
    });
    expect(result).toBe('done');
    expect(client.getTransactionStatus()).toBe('I');
    await client.query(`UPDATE ${s}.users SET email = 'b@example.com' WHERE id = 1`);
    await notify(client, 'audit', { step: 2 }, { schema: t.schema });
    const rows = await storedAfter(from);
    expect(
      rows.map((r) => [r.channel, r.context, 'context' in r.payload ? r.payload.context : 'none']),
    ).toEqual([
      ['users', context, context],
      ['audit', context, 'none'],
      ['users', null, null],
      ['audit', null, 'none'],
    ]);
  });

  it('rolls back when fn throws, and the context does not survive', async () => {
    const from = await lastId();
    await expect(
      withContext(client, { userId: 1 }, async (tx) => {
        await notify(tx, 'audit', { lost: true }, { schema: t.schema });
        throw new Error('boom');
      }),
    ).rejects.toThrow('boom');
    expect(client.getTransactionStatus()).toBe('I');
    await notify(client, 'audit', { kept: true }, { schema: t.schema });
    expect(await storedAfter(from)).toEqual([
      { channel: 'audit', payload: { kept: true }, context: null },
    ]);
  });

  it('inside a transaction it scopes the context to fn and keeps the transaction open', async () => {
    const from = await lastId();
    await client.query('BEGIN');
    await setContext(client, { outer: true });
    await withContext(client, { inner: true }, async (tx) => {
      await notify(tx, 'audit', { n: 1 }, { schema: t.schema });
    });
    expect(client.getTransactionStatus()).toBe('T');
    await notify(client, 'audit', { n: 2 }, { schema: t.schema });
    await client.query('COMMIT');
    await notify(client, 'audit', { n: 3 }, { schema: t.schema });
    expect((await storedAfter(from)).map((r) => [r.payload.n, r.context])).toEqual([
      [1, { inner: true }],
      [2, { outer: true }],
      [3, null],
    ]);
  });

  it('works with a Pool, and the pooled connection is clean afterwards', async () => {
    const pool = new pg.Pool({ connectionString: t.databaseUrl, max: 1 });
    try {
      const from = await lastId();
      await withContext(pool, { via: 'pool' }, (tx) =>
        notify(tx, 'audit', { n: 1 }, { schema: t.schema }),
      );
      // max: 1, so this is the same connection.
      await notify(pool, 'audit', { n: 2 }, { schema: t.schema });
      expect((await storedAfter(from)).map((r) => r.context)).toEqual([{ via: 'pool' }, null]);
    } finally {
      await pool.end();
    }
  });

  it('plain SQL SET LOCAL works the same way', async () => {
    const from = await lastId();
    await client.query('BEGIN');
    await client.query(`SET LOCAL pgq_bridge.context = '{"job": "nightly"}'`);
    await client.query(`INSERT INTO ${s}.users VALUES (2, 'c@example.com')`);
    await client.query('COMMIT');
    const [row] = await storedAfter(from);
    expect(row.context).toEqual({ job: 'nightly' });
    expect(row.payload.context).toEqual({ job: 'nightly' });
  });

  it('refuses a context that is not a JSON object', async () => {
    for (const bad of [null, [1, 2], 'user-1']) {
      await expect(
        withContext(client, bad as unknown as Record<string, unknown>, async () => undefined),
      ).rejects.toMatchObject({ code: 'PGQ_INVALID_CONTEXT' });
    }
    expect(client.getTransactionStatus()).toBe('I');
  });
});

interface Order {
  id: number;
  total: number;
}

describe('typed channels', () => {
  const zodLike = {
    parse(value: unknown): Order {
      const v = value as Partial<Order>;
      if (typeof v?.id !== 'number' || typeof v.total !== 'number') {
        const error = new Error('bad order') as Error & { issues: unknown[] };
        error.issues = [{ path: ['total'], message: 'Expected number, received string' }];
        throw error;
      }
      return { id: v.id, total: v.total };
    },
  };
  const standard: StandardSchemaV1<unknown, Order> = {
    '~standard': {
      version: 1,
      vendor: 'test',
      validate: async (value) => {
        const v = value as Partial<Order>;
        return typeof v?.total === 'number' && v.total >= 0
          ? { value: { id: Number(v.id), total: v.total } }
          : { issues: [{ message: 'must be >= 0', path: [{ key: 'total' }] }] };
      },
    },
  };
  const channels = {
    function: defineChannel('orders', {
      validate: (value: unknown): Order => {
        if (typeof (value as Order)?.total !== 'number') throw new Error('total must be a number');
        return value as Order;
      },
    }),
    guard: defineChannel('orders', {
      validate: (value: unknown): value is Order => typeof (value as Order)?.total === 'number',
    }),
    parse: defineChannel('orders', { validate: zodLike }),
    standard: defineChannel('orders', { validate: standard }),
  };
  const reasons = {
    function: /total must be a number/,
    guard: /returned false/,
    parse: /total: Expected number, received string/,
    standard: /total: must be >= 0/,
  };

  for (const [kind, channel] of Object.entries(channels)) {
    it(`a ${kind} validator rejects a bad payload at notify() time, storing nothing`, async () => {
      const from = await lastId();
      const bad = { id: 1, total: kind === 'standard' ? -1 : 'lots' } as unknown as Order;
      const error = await channel.notify(t.pool, bad, { schema: t.schema }).then(
        () => undefined,
        (e: unknown) => e,
      );
      expect(error).toBeInstanceOf(PgqError);
      expect(error).toMatchObject({ code: 'PGQ_INVALID_PAYLOAD' });
      expect((error as Error).message).toMatch(/^channel "orders": invalid payload: /);
      expect((error as Error).message).toMatch(reasons[kind as keyof typeof reasons]);
      expect(await storedAfter(from)).toEqual([]);
      const id = await channel.notify(t.pool, { id: 2, total: 5 }, { schema: t.schema });
      expect(id).toMatch(/^\d+$/);
      expect((await storedAfter(from)).map((r) => r.payload)).toEqual([{ id: 2, total: 5 }]);
    });
  }

  it('the validator output is what gets stored (transforms, stripped fields)', async () => {
    const from = await lastId();
    const extra = { id: 3, total: 4, secret: 'x' } as Order;
    await channels.parse.notify(t.pool, extra, { schema: t.schema });
    expect((await storedAfter(from))[0].payload).toEqual({ id: 3, total: 4 });
  });

  it('a bad channel name or validator is refused when the channel is defined', () => {
    expect(() => defineChannel('bad name')).toThrow(/invalid channel name/);
    expect(() =>
      defineChannel('ok', { validate: 42 as unknown as (v: unknown) => unknown }),
    ).toThrow(/validate must be/);
  });

  it('tsc rejects a wrongly typed payload (and test/types/typed-channel.ts compiles)', async () => {
    // One file with a single wrong use and no @ts-expect-error: tsc must report exactly that.
    // The type test itself marks every wrong use with @ts-expect-error, so it compiles cleanly
    // only while each of them is still rejected.
    const dir = writeTempDir({
      'wrong.ts': [
        "import { defineChannel } from '../../src/index.js';",
        'const orders = defineChannel<{ id: number; total: number }>("orders");',
        'export const sent = orders.notify(null as never, { id: 1, total: "9.50" });',
        '',
      ].join('\n'),
    });
    const result = await promisify(execFile)(
      process.execPath,
      [
        `${REPO_ROOT}node_modules/typescript/bin/tsc`,
        '--noEmit',
        '--pretty',
        'false',
        '--strict',
        '--skipLibCheck',
        '--module',
        'NodeNext',
        '--moduleResolution',
        'NodeNext',
        '--target',
        'ES2022',
        '--types',
        'node',
        'test/types/typed-channel.ts',
        join(relative(REPO_ROOT, dir), 'wrong.ts'),
      ],
      { cwd: REPO_ROOT },
    ).then(
      () => ({ code: 0, out: '' }),
      (e: { code: number; stdout: string }) => ({ code: e.code, out: e.stdout }),
    );
    expect(result.code).toBe(2);
    const errors = result.out.trim().split('\n');
    expect(errors).toHaveLength(1);
    expect(errors[0]).toMatch(
      /wrong\.ts\(3,\d+\): error TS2322: Type 'string' is not assignable to type 'number'/,
    );
  });
});
