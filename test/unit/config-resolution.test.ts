import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { DEFAULTS, resolveConfig } from '../../src/config.js';
import { parseByteSize } from '../../src/config-values.js';
import { ConfigError } from '../../src/errors.js';
import { redactSecrets } from '../../src/log.js';

const dirs: string[] = [];
afterAll(() => {
  for (const dir of dirs) rmSync(dir, { recursive: true, force: true });
});

function dirWith(files: Record<string, string>): string {
  const dir = mkdtempSync(join(tmpdir(), 'pgq-config-'));
  dirs.push(dir);
  for (const [name, text] of Object.entries(files)) writeFileSync(join(dir, name), text);
  return dir;
}

const fileConfig = (schema: string, extra = '') =>
  `export default { schema: '${schema}', prefix: 'file_prefix', redisUrl: 'redis://file:6379', logLevel: 'warn', ${extra} };`;

/** The error `resolveConfig` rejects with. */
async function configError(options: Parameters<typeof resolveConfig>[0]): Promise<Error> {
  const error = await resolveConfig(options).then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(error).toBeInstanceOf(ConfigError);
  return error as Error;
}

describe('resolveConfig', () => {
  it('uses the defaults of SPEC.md when nothing is given', async () => {
    const cwd = dirWith({});
    const config = await resolveConfig({ env: {}, cwd, flags: {} });
    expect(config).toEqual({
      databaseUrl: DEFAULTS.databaseUrl,
      listenDatabaseUrl: DEFAULTS.databaseUrl,
      redisUrl: 'redis://127.0.0.1:6379',
      schema: 'pgq_bridge',
      prefix: 'pgq',
      inlinePayloadLimit: 64 * 1024,
      logLevel: 'info',
      logFormat: 'json',
    });
    expect(DEFAULTS.databaseUrl).toBe('postgres://postgres@localhost:5432/postgres');
    expect((await resolveConfig({ env: {}, cwd, isTTY: true })).logFormat).toBe('pretty');
  });

  it('reads pgq-bridge.config.mjs from the working directory over the defaults', async () => {
    const cwd = dirWith({ 'pgq-bridge.config.mjs': fileConfig('from_file') });
    const config = await resolveConfig({ env: {}, cwd });
    expect(config).toMatchObject({
      schema: 'from_file',
      prefix: 'file_prefix',
      redisUrl: 'redis://file:6379',
      logLevel: 'warn',
      databaseUrl: DEFAULTS.databaseUrl,
      configFile: join(cwd, 'pgq-bridge.config.mjs'),
    });
  });

  it('prefers --config (then PGQ_CONFIG) to the file in the working directory', async () => {
    const cwd = dirWith({
      'pgq-bridge.config.mjs': fileConfig('from_cwd_file'),
      'other.mjs': fileConfig('from_explicit_file'),
      'third.mjs': fileConfig('from_env_file'),
    });
    const viaFlag = await resolveConfig({
      env: { PGQ_CONFIG: 'third.mjs' },
      cwd,
      flags: { config: 'other.mjs' },
    });
    expect(viaFlag.schema).toBe('from_explicit_file');
    expect(viaFlag.configFile).toBe(join(cwd, 'other.mjs'));
    const viaEnv = await resolveConfig({ env: { PGQ_CONFIG: join(cwd, 'third.mjs') }, cwd });
    expect(viaEnv.schema).toBe('from_env_file');
  });

  it('ranks defaults < config file < environment < flags, setting by setting', async () => {
    const cwd = dirWith({ 'pgq-bridge.config.mjs': fileConfig('from_file') });
    const env = { PGQ_SCHEMA: 'from_env', REDIS_URL: 'redis://env:6379', LOG_LEVEL: 'debug' };
    const config = await resolveConfig({ env, cwd, flags: { schema: 'from_flag' } });
    expect(config.schema).toBe('from_flag'); // flag > env > file
    expect(config.redisUrl).toBe('redis://env:6379'); // env > file
    expect(config.logLevel).toBe('debug'); // env > file
    expect(config.prefix).toBe('file_prefix'); // file > default
    expect(config.databaseUrl).toBe(DEFAULTS.databaseUrl); // default
    // Empty env variables count as unset.
    expect((await resolveConfig({ env: { PGQ_SCHEMA: '' }, cwd })).schema).toBe('from_file');
  });

  it('defaults the LISTEN URL to the resolved database URL, wherever it came from', async () => {
    const cwd = dirWith({});
    const a = await resolveConfig({ env: { DATABASE_URL: 'postgres://h1/db' }, cwd });
    expect(a.listenDatabaseUrl).toBe('postgres://h1/db');
    const b = await resolveConfig({
      env: { DATABASE_URL: 'postgres://h1/db', LISTEN_DATABASE_URL: 'postgres://direct/db' },
      cwd,
      flags: { databaseUrl: 'postgres://h2/db' },
    });
    expect(b.databaseUrl).toBe('postgres://h2/db');
    expect(b.listenDatabaseUrl).toBe('postgres://direct/db');
  });

  it('resolves consumersDir against the config file and passes inline consumers on', async () => {
    const cwd = dirWith({
      'pgq-bridge.config.mjs': fileConfig(
        's',
        `consumersDir: './handlers', consumers: [{ id: 'a', channels: ['x'], handle() {} }]`,
      ),
    });
    const config = await resolveConfig({ env: {}, cwd });
    expect(config.consumersDir).toBe(join(cwd, 'handlers'));
    expect(config.consumers?.map((c) => c.id)).toEqual(['a']);
  });

  it.each([
    [{ env: { DATABASE_URL: 'not a url' } }, /^database-url \(DATABASE_URL\): not a valid URL/],
    [{ env: { DATABASE_URL: 'mysql://h/db' } }, /^database-url \(DATABASE_URL\): expected/],
    [{ env: { LISTEN_DATABASE_URL: 'http://x' } }, /^listen-database-url/],
    [{ env: { REDIS_URL: 'postgres://x' } }, /^redis-url \(REDIS_URL\)/],
    [{ env: { PGQ_SCHEMA: 'bad-schema' } }, /^schema \(PGQ_SCHEMA\): invalid schema name/],
    [{ flags: { prefix: 'has space' } }, /^prefix \(PGQ_PREFIX\): invalid BullMQ prefix/],
    [{ env: { LOG_LEVEL: 'loud' } }, /^log-level \(LOG_LEVEL\): expected one of/],
    [{ env: { LOG_FORMAT: 'xml' } }, /^log-format \(LOG_FORMAT\): expected json or pretty/],
    [{ flags: { config: 'missing.mjs' } }, /^config: file not found: .*missing\.mjs/],
  ])('refuses a bad setting, naming it: %j', async (options, message) => {
    const error = await configError({ env: {}, cwd: dirWith({}), ...options });
    expect(error.message).toMatch(message);
  });

  it('names the config file when it is invalid or fails to load', async () => {
    const cwd = dirWith({
      'pgq-bridge.config.mjs': `export default { schema: 'a-b' };`,
      'array.mjs': `export default [1];`,
      'throws.mjs': `throw new Error('config exploded');`,
    });
    expect((await configError({ env: {}, cwd })).message).toMatch(/^schema \(PGQ_SCHEMA\)/);
    expect((await configError({ env: {}, cwd, flags: { config: 'array.mjs' } })).message).toMatch(
      /array\.mjs must export default defineConfig/,
    );
    const thrown = await configError({ env: {}, cwd, flags: { config: 'throws.mjs' } });
    expect(thrown.message).toMatch(/^config: cannot load .*throws\.mjs: config exploded/);
  });

  it('never puts a password into an error message', async () => {
    const cases = [
      { DATABASE_URL: 'postgres://user:s3cret-pw@db.example:99999/x' },
      { DATABASE_URL: 'mysql://user:s3cret-pw@db/x' },
      { REDIS_URL: 'http://:s3cret-pw@redis:6379' },
      { LISTEN_DATABASE_URL: 'ftp://u:s3cret-pw@h/x' },
    ];
    for (const env of cases) {
      const error = await configError({ env, cwd: dirWith({}) });
      expect(error.message).not.toContain('s3cret-pw');
      expect(error.message).toContain('***');
    }
  });
});

describe('redactSecrets', () => {
  it('hides URL passwords and keeps the rest', () => {
    expect(redactSecrets('postgres://bob:hunter2@db:5432/app')).toBe(
      'postgres://bob:***@db:5432/app',
    );
    expect(redactSecrets('redis://:pw@r:6379 and postgresql://a:b@c/d')).toBe(
      'redis://:***@r:6379 and postgresql://a:***@c/d',
    );
    expect(redactSecrets('postgres://bob@db/app')).toBe('postgres://bob@db/app');
  });
});

describe('inline payload limit', () => {
  it('reads bytes or binary units and refuses anything else', () => {
    expect(parseByteSize('x', '65536')).toBe(65536);
    expect(parseByteSize('x', '64KiB')).toBe(65536);
    expect(parseByteSize('x', '64k')).toBe(65536);
    expect(parseByteSize('x', '1MB')).toBe(1024 ** 2);
    expect(parseByteSize('x', ' 2 mib ')).toBe(2 * 1024 ** 2);
    expect(parseByteSize('x', '0')).toBe(0);
    expect(parseByteSize('x', 1000)).toBe(1000);
    for (const bad of ['', '-1', '1.5k', '10 parsecs', 'k']) {
      expect(() => parseByteSize('x', bad), bad).toThrow(ConfigError);
    }
    expect(() => parseByteSize('x', 1.5)).toThrow(ConfigError);
  });

  it('comes from the config file, then PGQ_INLINE_PAYLOAD_LIMIT, then the flag', async () => {
    const cwd = dirWith({ 'pgq-bridge.config.mjs': fileConfig('s', 'inlinePayloadLimit: 1000') });
    expect((await resolveConfig({ env: {}, cwd })).inlinePayloadLimit).toBe(1000);
    const env = { PGQ_INLINE_PAYLOAD_LIMIT: '2KiB' };
    expect((await resolveConfig({ env, cwd })).inlinePayloadLimit).toBe(2048);
    const flags = { inlinePayloadLimit: '3k' };
    expect((await resolveConfig({ env, cwd, flags })).inlinePayloadLimit).toBe(3072);
    const error = await configError({ env: { PGQ_INLINE_PAYLOAD_LIMIT: 'lots' }, cwd });
    expect(error.message).toMatch(/inline-payload-limit \(PGQ_INLINE_PAYLOAD_LIMIT\)/);
  });
});
