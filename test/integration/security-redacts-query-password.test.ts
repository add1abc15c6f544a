/**
 * Passwords never appear in logs or error messages (SPEC "Configuration"), in every form pg and
 * ioredis accept: `user:pass@` URLs (a password may hold `@`), `?password=` query parameters, and
 * error messages logged by code paths that did not redact them themselves (a handler's error).
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { runCli } from '../support/cli.js';
import { createTestEnv, type TestEnv } from '../support/env.js';
import {
  hasMsg,
  migrateWithHandledTable,
  removeConsumerDirs,
  startListen,
  startWork,
  stopGracefully,
  writeConsumers,
} from '../support/delivery.js';

let t: TestEnv;
beforeAll(async () => {
  t = createTestEnv();
  await migrateWithHandledTable(t);
});
afterAll(async () => {
  await t.cleanup();
  removeConsumerDirs();
});

describe('password redaction', () => {
  const unreachable: Array<[string, string, string]> = [
    ['a query-string password', 'postgres://app@127.0.0.1:1/db?password=Qs3cr3tQ', 'Qs3cr3tQ'],
    [
      'a query-string password after other parameters',
      'postgres://app@127.0.0.1:1/db?sslmode=disable&password=Qs3cr3tR',
      'Qs3cr3tR',
    ],
    ['a user:password URL', 'postgres://app:Us3cr3tU@127.0.0.1:1/db', 'Us3cr3tU'],
    ['a password holding @', 'postgres://app:At%40x@Ys3cr3tY@127.0.0.1:1/db', 'Ys3cr3tY'],
  ];
  for (const [what, url, secret] of unreachable) {
    it(`${what} is redacted from the connection error`, async () => {
      const result = await runCli(['notify', 'orders', '{}', '--database-url', url], {
        env: t.env,
      });
      expect(result.code).toBe(1);
      expect(result.stderr).toMatch(/^pgq-bridge: cannot connect to Postgres at postgres:\/\/app/);
      expect(result.stderr).toContain('***');
      expect(result.stdout + result.stderr).not.toContain(secret);
    });
  }

  it('an error message quoting a connection string is redacted in the logs', async () => {
    const dir = writeConsumers({
      'leaky.mjs': `import { defineConsumer, PermanentError } from 'pgq-bridge';
export default defineConsumer({ id: 'leaky', channels: ['orders'], attempts: 1,
  async handle() {
    throw new PermanentError('cannot reach postgres://svc@billing/db?password=Hs3cr3tH nor redis://:Hs3cr3tK@cache:6379');
  } });`,
    });
    const listen = await startListen(t.env);
    const work = await startWork({ ...t.env, LOG_LEVEL: 'debug' }, dir, 1);
    await t.pool.query(`SELECT "${t.schema}".notify('orders', '{}')`);
    const failed = await work.waitForOutput(hasMsg(/handler failed/), 30_000);
    expect(String(failed.json?.err)).toContain('password=***');
    expect(String(failed.json?.err)).toContain('redis://:***@cache');
    await stopGracefully(work);
    await stopGracefully(listen);
    expect(work.stdout() + work.stderr()).not.toMatch(/Hs3cr3t/);
  });
});
