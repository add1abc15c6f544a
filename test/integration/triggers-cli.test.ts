/**
 * Issue 4: `pgq-bridge triggers add | remove | list` — what `list` shows is exactly what
 * pg_trigger holds, `--print-sql` installs nothing, bad input is a usage error.
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { runCli } from '../support/cli.js';
import { q, triggersCli } from '../support/change.js';
import { createTestEnv, type TestEnv } from '../support/env.js';

let t: TestEnv;
let s: string;

interface Listed {
  table: string;
  trigger: string;
  channel: string;
  events: string[];
  keyColumns: string[];
  condition: string | null;
}

/** `triggers list --json`, restricted to this test's tables. */
async function listed(): Promise<Listed[]> {
  const out = await triggersCli(t.env, ['list', '--json']);
  return (JSON.parse(out) as Listed[]).map(
    ({ table, trigger, channel, events, keyColumns, condition }) => ({
      table,
      trigger,
      channel,
      events,
      keyColumns,
      condition,
    }),
  );
}

/** The triggers on this test's tables according to the catalog itself. */
async function catalog(): Promise<string[]> {
  const { rows } = await t.pool.query<{ name: string }>(
    `SELECT c.relname || ':' || tg.tgname AS name
       FROM pg_trigger tg JOIN pg_class c ON c.oid = tg.tgrelid
      WHERE c.relnamespace = $1::regnamespace AND NOT tg.tgisinternal
      ORDER BY 1`,
    [q(t.schema)],
  );
  return rows.map((r) => r.name);
}

beforeAll(async () => {
  t = createTestEnv();
  s = q(t.schema);
  const migrated = await runCli(['migrate'], { env: t.env });
  expect(migrated.code, migrated.stderr).toBe(0);
  await t.pool.query(`
    CREATE TABLE ${s}.users (id int PRIMARY KEY, email text, name text);
    CREATE TABLE ${s}."Line Items" (order_id int, line int, qty int, PRIMARY KEY (order_id, line));
    CREATE TABLE ${s}.nokey (a int);
    CREATE TABLE ${s}.victim (id int);
  `);
});

afterAll(async () => {
  await t.cleanup();
});

describe('triggers list after add and remove', () => {
  it('shows exactly what is installed', async () => {
    expect(await listed()).toEqual([]);
    const users = `${t.schema}.users`;
    const lines = `${t.schema}."Line Items"`;
    const name = (event: string) => `pgq_bridge_${t.schema}_${event}`;

    const out = await triggersCli(t.env, ['add', users, '--channel', 'users']);
    expect(out).toMatch(new RegExp(`installed ${name('insert')} on ${t.schema}\\.users`));
    await triggersCli(t.env, [
      'add',
      lines,
      '--channel',
      'lines',
      '--events',
      'INSERT,update',
      '--columns',
      'qty',
    ]);
    await triggersCli(t.env, ['add', `${t.schema}.nokey`]);
    expect(await listed()).toEqual([
      {
        table: `${t.schema}."Line Items"`,
        trigger: name('insert'),
        channel: 'lines',
        events: ['INSERT'],
        keyColumns: ['order_id', 'line'],
        condition: null,
      },
      {
        table: `${t.schema}."Line Items"`,
        trigger: name('update'),
        channel: 'lines',
        events: ['UPDATE'],
        keyColumns: ['order_id', 'line'],
        condition: '(old.qty IS DISTINCT FROM new.qty)',
      },
      ...['delete', 'insert', 'update'].map((e) => ({
        table: `${t.schema}.nokey`,
        trigger: name(e),
        channel: 'data_change',
        events: [e.toUpperCase()],
        keyColumns: [],
        condition: null,
      })),
      ...['delete', 'insert', 'update'].map((e) => ({
        table: `${t.schema}.users`,
        trigger: name(e),
        channel: 'users',
        events: [e.toUpperCase()],
        keyColumns: ['id'],
        condition: null,
      })),
    ]);
    expect(await catalog()).toEqual([
      `Line Items:${name('insert')}`,
      `Line Items:${name('update')}`,
      `nokey:${name('delete')}`,
      `nokey:${name('insert')}`,
      `nokey:${name('update')}`,
      `users:${name('delete')}`,
      `users:${name('insert')}`,
      `users:${name('update')}`,
    ]);

    // The text form: one line per trigger, with table, channel and events.
    const text = await triggersCli(t.env, ['list']);
    const rows = text.trim().split('\n');
    expect(rows[0]).toMatch(/^TABLE\s+CHANNEL\s+EVENTS\s+TRIGGER\s+CONDITION$/);
    expect(rows.slice(1).map((r) => r.split(/\s{2,}/).slice(0, 3))).toContainEqual([
      `${t.schema}."Line Items"`,
      'lines',
      'update',
    ]);

    // Adding again replaces the table's triggers (here: fewer events, another channel).
    await triggersCli(t.env, ['add', users, '--channel', 'people', '--events', 'delete']);
    await triggersCli(t.env, ['remove', `${t.schema}.nokey`]);
    const removed = await triggersCli(t.env, ['remove', lines]);
    expect(removed).toMatch(/removed .*_insert/);
    expect(await triggersCli(t.env, ['remove', lines])).toMatch(/no notify_data_change trigger/);
    expect(await listed()).toEqual([
      {
        table: `${t.schema}.users`,
        trigger: name('delete'),
        channel: 'people',
        events: ['DELETE'],
        keyColumns: ['id'],
        condition: null,
      },
    ]);
    expect(await catalog()).toEqual([`users:${name('delete')}`]);

    // A hand-written trigger using the function is listed and removed too.
    await t.pool.query(
      `CREATE TRIGGER mine AFTER INSERT OR UPDATE ON ${s}.users FOR EACH ROW
         EXECUTE FUNCTION ${s}.notify_data_change()`,
    );
    expect((await listed()).map((l) => [l.trigger, l.channel, l.events])).toEqual([
      ['mine', 'data_change', ['INSERT', 'UPDATE']],
      [name('delete'), 'people', ['DELETE']],
    ]);
    await triggersCli(t.env, ['remove', users]);
    expect(await listed()).toEqual([]);
    expect(await catalog()).toEqual([]);
  });

  it('--print-sql prints the statements and installs nothing', async () => {
    const sql = await triggersCli(t.env, [
      'add',
      `${t.schema}."Line Items"`,
      '--columns',
      'qty',
      '--print-sql',
    ]);
    expect(sql).toContain(
      `CREATE TRIGGER "pgq_bridge_${t.schema}_update" AFTER UPDATE ON ${s}."Line Items" FOR EACH ROW WHEN (OLD."qty" IS DISTINCT FROM NEW."qty") EXECUTE FUNCTION ${s}.notify_data_change('data_change', 'order_id', 'line');`,
    );
    expect(await listed()).toEqual([]);
    // The printed SQL is what a migration tool would run: it installs the same triggers.
    await t.pool.query(sql);
    expect((await listed()).map((l) => l.trigger)).toHaveLength(3);
    await triggersCli(t.env, ['remove', `${t.schema}."Line Items"`]);
  });
});

describe('bad input', () => {
  const cases: Array<[string, string[], RegExp]> = [
    ['unknown event', ['--events', 'insert,truncate'], /unknown event "truncate"/],
    ['columns without update', ['--events', 'insert', '--columns', 'email'], /no update/],
    ['bad channel', ['--channel', 'bad channel'], /invalid channel name/],
    ['unknown column', ['--columns', 'nope'], /column .*nope.* does not exist/],
    [
      'OLD in an INSERT condition',
      ['--when', 'OLD.email IS DISTINCT FROM NEW.email'],
      /cannot reference OLD.*--events update/,
    ],
    [
      'a second statement in --when',
      ['--when', `true) EXECUTE FUNCTION f(); DROP TABLE x; --`],
      /multiple commands/,
    ],
  ];
  for (const [what, flags, message] of cases) {
    // --print-sql refuses what `add` refuses: it has Postgres check the triggers it prints.
    for (const printSql of [[], ['--print-sql']]) {
      it(`${what} is a usage error and installs nothing ${printSql.join(' ')}`, async () => {
        const result = await runCli(
          ['triggers', 'add', `${t.schema}.users`, ...flags, ...printSql],
          { env: t.env },
        );
        expect(result.code, result.stderr).toBe(2);
        expect(result.stderr).toMatch(message);
        expect(result.stdout).toBe('');
        expect(await catalog()).toEqual([]);
      });
    }
  }

  it('--print-sql works before migrate and leaves nothing behind', async () => {
    const other = createTestEnv();
    try {
      const result = await runCli(
        ['triggers', 'add', `${t.schema}.users`, '--events', 'update', '--print-sql'],
        { env: other.env },
      );
      expect(result.code, result.stderr).toBe(0);
      expect(result.stdout).toContain(
        `CREATE TRIGGER "pgq_bridge_${other.schema}_update" AFTER UPDATE ON ${s}."users"`,
      );
      const { rows } = await t.pool.query(`SELECT 1 FROM pg_namespace WHERE nspname = $1`, [
        other.schema,
      ]);
      expect(rows).toEqual([]);
      const refused = await runCli(
        ['triggers', 'add', `${t.schema}.users`, '--when', 'OLD.nope', '--print-sql'],
        { env: other.env },
      );
      expect(refused.code).toBe(2);
      expect(refused.stderr).toMatch(/cannot create the trigger.*column old\.nope does not exist/);
    } finally {
      await other.cleanup();
    }
  });

  it('a malicious table name is refused: Postgres parses it as a bound parameter', async () => {
    const result = await runCli(
      ['triggers', 'add', `${t.schema}.users; DROP TABLE ${t.schema}.victim`],
      { env: t.env },
    );
    expect(result.code).toBe(2);
    expect(result.stderr).toMatch(/invalid table name/);
    expect((await t.pool.query(`SELECT to_regclass($1) AS t`, [`${s}.victim`])).rows[0].t).not.toBe(
      null,
    );
  });

  it('names follow Postgres: unquoted folds to lower case; a missing table is exit 1', async () => {
    const missing = await runCli(['triggers', 'add', `${t.schema}."Users"`], { env: t.env });
    expect(missing.code).toBe(1);
    expect(missing.stderr).toContain(`table "${t.schema}"."Users" does not exist`);
    expect(await catalog()).toEqual([]);
    await triggersCli(t.env, ['add', `${t.schema.toUpperCase()}.Users`, '--events', 'insert']);
    expect(await catalog()).toEqual([`users:pgq_bridge_${t.schema}_insert`]);
    await triggersCli(t.env, ['remove', `${t.schema}.users`]);
  });

  it('a BEFORE trigger using the function fails loudly instead of dropping writes', async () => {
    await t.pool.query(
      `CREATE TABLE ${s}.before_t (id int);
       CREATE TRIGGER wrong BEFORE INSERT ON ${s}.before_t FOR EACH ROW
         EXECUTE FUNCTION ${s}.notify_data_change()`,
    );
    await expect(t.pool.query(`INSERT INTO ${s}.before_t VALUES (1)`)).rejects.toThrow(
      /must be an AFTER \.\.\. FOR EACH ROW trigger/,
    );
    await t.pool.query(`DROP TABLE ${s}.before_t`);
  });

  it('before migrate, add says to migrate', async () => {
    const other = createTestEnv();
    try {
      const result = await runCli(['triggers', 'add', `${t.schema}.users`], { env: other.env });
      expect(result.code).toBe(1);
      expect(result.stderr).toMatch(/run `pgq-bridge migrate` first/);
    } finally {
      await other.cleanup();
    }
  });
});
