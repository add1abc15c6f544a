/**
 * Issue 2, configuration through the CLI: defaults < config file (in the working directory, or
 * --config) < environment < flags; a bad setting names itself (exit 2); a password in
 * DATABASE_URL never appears in any output, even at debug level.
 */
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { runCli, startCli } from '../support/cli.js';
import { createTestEnv, type TestEnv } from '../support/env.js';
import { hasMsg, removeConsumerDirs, writeConsumers } from '../support/delivery.js';
import { freePort } from '../support/servers.js';

const t: TestEnv = createTestEnv();
afterAll(async () => {
  await t.cleanup();
  removeConsumerDirs();
});

/** The schema `migrate --print-sql` would install, i.e. the resolved schema setting. */
async function printedSchema(env: NodeJS.ProcessEnv, args: string[], cwd: string) {
  const result = await runCli([...args, 'migrate', '--print-sql'], { env, cwd });
  expect(result.code, result.stderr).toBe(0);
  return /^-- pgq-bridge schema (\S+)$/m.exec(result.stdout)?.[1];
}

describe('configuration precedence (CLI)', () => {
  it('ranks defaults < config file < env < flags', async () => {
    const dir = writeConsumers({
      'pgq-bridge.config.mjs': `export default { schema: 'from_cwd_file' };`,
      'explicit.mjs': `export default { schema: 'from_explicit_file' };`,
    });
    const empty = writeConsumers({});
    const env = { ...t.env };
    delete env.PGQ_SCHEMA;
    expect(await printedSchema(env, [], empty)).toBe('pgq_bridge');
    expect(await printedSchema(env, [], dir)).toBe('from_cwd_file');
    expect(await printedSchema(env, ['--config', join(dir, 'explicit.mjs')], empty)).toBe(
      'from_explicit_file',
    );
    expect(await printedSchema({ ...env, PGQ_CONFIG: join(dir, 'explicit.mjs') }, [], empty)).toBe(
      'from_explicit_file',
    );
    expect(await printedSchema({ ...env, PGQ_SCHEMA: 'from_env' }, [], dir)).toBe('from_env');
    expect(
      await printedSchema({ ...env, PGQ_SCHEMA: 'from_env' }, ['--schema', 'from_flag'], dir),
    ).toBe('from_flag');
  });

  it('names a bad setting, wherever it came from (exit 2)', async () => {
    const dir = writeConsumers({});
    writeFileSync(join(dir, 'pgq-bridge.config.mjs'), `export default { prefix: 'bad prefix' };`);
    const env = { ...t.env };
    delete env.PGQ_PREFIX;
    const fromFile = await runCli(['migrate', '--print-sql'], { env, cwd: dir });
    expect(fromFile.code, fromFile.stderr).toBe(2);
    expect(fromFile.stderr).toMatch(/^pgq-bridge: prefix \(PGQ_PREFIX\): invalid BullMQ prefix/);

    const fromEnv = await runCli(['migrate'], { env: { ...t.env, PGQ_SCHEMA: 'no-dashes' } });
    expect(fromEnv.code, fromEnv.stderr).toBe(2);
    expect(fromEnv.stderr).toMatch(/^pgq-bridge: schema \(PGQ_SCHEMA\): invalid schema name/);

    const fromFlag = await runCli(['--redis-url', 'http://x', 'listen'], { env: t.env });
    expect(fromFlag.code, fromFlag.stderr).toBe(2);
    expect(fromFlag.stderr).toMatch(/^pgq-bridge: redis-url \(REDIS_URL\)/);

    const badUrl = await runCli(['migrate'], {
      env: { ...t.env, DATABASE_URL: 'postgres://app:Sup3r-s3cret@db:99999/x' },
    });
    expect(badUrl.code, badUrl.stderr).toBe(2);
    expect(badUrl.stderr).toMatch(/^pgq-bridge: database-url \(DATABASE_URL\)/);
    expect(badUrl.stderr).not.toContain('Sup3r-s3cret');
  });
});

describe('passwords', () => {
  it('never appear in the output of listen and work retrying an unreachable Postgres', async () => {
    const secret = 'Sup3r-s3cret';
    const dir = writeConsumers({
      'c.mjs': `export default { id: 'c', channels: ['orders'], handle() {} };`,
    });
    const env = {
      ...t.env,
      DATABASE_URL: `postgres://app:${secret}@127.0.0.1:${await freePort()}/x`,
      LOG_LEVEL: 'debug',
    };
    const listen = startCli(['listen', '--reconnect-delay', '0.1'], { env });
    const work = startCli(['work', '--consumers-dir', dir], { env });
    await listen.waitForOutput(hasMsg('LISTEN connection failed; retrying'));
    await listen.waitForOutput(hasMsg('bridging a batch failed; retrying'));
    await work.waitForOutput(hasMsg('registering consumers failed; retrying'));
    listen.kill('SIGTERM');
    work.kill('SIGTERM');
    expect((await listen.waitForExit()).code).toBe(0);
    expect((await work.waitForExit()).code).toBe(0);
    for (const handle of [listen, work]) {
      const output = handle.stdout() + handle.stderr();
      expect(output).toContain('ECONNREFUSED');
      expect(output).not.toContain(secret);
    }
  });
});
