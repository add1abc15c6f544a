import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { channelNames, type ConsumerDefinition } from '../../src/consume/consumers.js';
import { loadConsumersDir, selectConsumers } from '../../src/consume/consumers-dir.js';
import { validateConsumer, validateConsumers } from '../../src/consume/consumer-validation.js';
import { PgqError, UsageError } from '../../src/errors.js';
import {
  assertChannel,
  assertConsumerId,
  PREFIX_PATTERN,
  quoteIdent,
  SCHEMA_PATTERN,
} from '../../src/identifiers.js';

const dirs: string[] = [];
afterAll(() => {
  for (const dir of dirs) rmSync(dir, { recursive: true, force: true });
});

/** A fresh directory holding the given files. */
function dirWith(files: Record<string, string>): string {
  const dir = mkdtempSync(join(tmpdir(), 'pgq-consumers-'));
  dirs.push(dir);
  for (const [name, text] of Object.entries(files)) writeFileSync(join(dir, name), text);
  return dir;
}

const ok = { id: 'audit', channels: ['orders'], handle: () => undefined };

describe('identifiers', () => {
  it('accepts channel names of 1-63 characters of [A-Za-z0-9_.:-]', () => {
    for (const name of ['a', 'orders', 'a.b:c-d_E9', 'x'.repeat(63)]) {
      expect(() => assertChannel(name)).not.toThrow();
    }
  });

  it('refuses other channel names with a clear usage error', () => {
    for (const name of ['', 'x'.repeat(64), 'has space', 'quote"', "it's", 'é', 'a;b', 'a/b']) {
      let caught: unknown;
      try {
        assertChannel(name);
      } catch (error) {
        caught = error;
      }
      expect(caught, name).toBeInstanceOf(UsageError);
      expect((caught as PgqError).code).toBe('PGQ_INVALID_CHANNEL');
      expect((caught as Error).message).toMatch(/invalid channel name/);
    }
    expect(() => assertChannel(42)).toThrow(/invalid channel name 42/);
    expect(() => assertChannel(undefined)).toThrow(UsageError);
  });

  it('checks consumer ids, schema names and prefixes', () => {
    expect(() => assertConsumerId('welcome-email_2')).not.toThrow();
    expect(() => assertConsumerId('x'.repeat(64))).not.toThrow();
    for (const bad of ['', 'x'.repeat(65), 'a.b', 'a:b', 'a b', null]) {
      expect(() => assertConsumerId(bad)).toThrow(/invalid consumer id/);
    }
    expect(SCHEMA_PATTERN.test('pgq_bridge')).toBe(true);
    expect(SCHEMA_PATTERN.test('_x9')).toBe(true);
    expect(SCHEMA_PATTERN.test('9x')).toBe(false);
    expect(SCHEMA_PATTERN.test('a"b')).toBe(false);
    expect(SCHEMA_PATTERN.test('x'.repeat(64))).toBe(false);
    expect(PREFIX_PATTERN.test('{pgq}:x')).toBe(true);
    expect(PREFIX_PATTERN.test('a b')).toBe(false);
    expect(PREFIX_PATTERN.test('')).toBe(false);
  });

  it('quotes identifiers, doubling embedded quotes', () => {
    expect(quoteIdent('pgq_bridge')).toBe('"pgq_bridge"');
    expect(quoteIdent('we"ird')).toBe('"we""ird"');
  });
});

describe('consumer validation', () => {
  it('accepts a minimal definition and channel objects', () => {
    expect(validateConsumer(ok, 'here')).toBe(ok);
    const def = { ...ok, channels: ['a', { name: 'b' }] };
    expect(channelNames(validateConsumer(def, 'here'))).toEqual(['a', 'b']);
  });

  it.each([
    ['not an object', 42, /must be an object/],
    ['a bad id', { ...ok, id: 'a b' }, /invalid consumer id "a b"/],
    ['no channels', { ...ok, channels: [] }, /channels must be a non-empty array/],
    ['a bad channel', { ...ok, channels: ['ok', 'no way'] }, /invalid channel name "no way"/],
    ['no handler', { id: 'x', channels: ['a'] }, /handle\(notification, job\) must be a function/],
    ['a bad concurrency', { ...ok, concurrency: 0 }, /concurrency must be a positive integer/],
    ['a bad attempts', { ...ok, attempts: 1.5 }, /attempts must be a positive integer/],
    ['a bad timeout', { ...ok, timeout: -1 }, /timeout must be a positive integer/],
    ['a bad startFrom', { ...ok, startFrom: 'yesterday' }, /startFrom must be/],
    ['a bad batch', { ...ok, batch: { size: 0, maxWaitMs: 1 } }, /batch must be/],
  ])('refuses %s, naming where it came from', (_what, value, message) => {
    expect(() => validateConsumer(value, 'consumers/x.ts')).toThrow(message);
    expect(() => validateConsumer(value, 'consumers/x.ts')).toThrow(/consumers\/x\.ts/);
    expect(() => validateConsumer(value, 'consumers/x.ts')).toThrow(UsageError);
  });

  it('refuses duplicate ids, naming both sources', () => {
    expect(() =>
      validateConsumers([
        { value: ok, where: 'a.ts' },
        { value: { ...ok, channels: ['other'] }, where: 'b.ts' },
      ]),
    ).toThrow(/duplicate consumer id "audit" in b\.ts \(also in a\.ts\)/);
  });

  it('selects consumers by id and refuses unknown ids', () => {
    const all = [ok, { ...ok, id: 'b' }, { ...ok, id: 'c' }] as ConsumerDefinition[];
    expect(selectConsumers(all).map((c) => c.id)).toEqual(['audit', 'b', 'c']);
    expect(selectConsumers(all, ['b', 'c']).map((c) => c.id)).toEqual(['b', 'c']);
    expect(selectConsumers(all, undefined, ['b']).map((c) => c.id)).toEqual(['audit', 'c']);
    expect(() => selectConsumers(all, ['nope'])).toThrow(/unknown consumer "nope"; known: audit/);
  });
});

describe('loadConsumersDir', () => {
  const handler = `handle() {}`;

  it('loads .mjs, .js and .ts files, single definitions and arrays, skipping the rest', async () => {
    const dir = dirWith({
      'a.mjs': `export default { id: 'a', channels: ['x'], ${handler} };`,
      'b.ts': `const c: { id: string; channels: string[]; handle(): void }[] = [
        { id: 'b1', channels: ['x'], ${handler} }, { id: 'b2', channels: ['y'], ${handler} }];
        export default c;`,
      'types.d.ts': `export type T = number;`,
      'notes.txt': 'not a consumer',
    });
    const consumers = await loadConsumersDir(dir);
    expect(consumers.map((c) => c.id)).toEqual(['a', 'b1', 'b2']);
  });

  it('names the file that has no default export', async () => {
    const dir = dirWith({ 'named.mjs': `export const consumer = { id: 'a' };` });
    await expect(loadConsumersDir(dir)).rejects.toThrow(
      new RegExp(`${join(dir, 'named.mjs').replace(/[.]/g, '\\.')} has no default export`),
    );
  });

  it('names the file whose import throws, with the cause', async () => {
    const dir = dirWith({ 'boom.mjs': `throw new Error('kaboom at import');` });
    const error = await loadConsumersDir(dir).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(UsageError);
    expect((error as PgqError).code).toBe('PGQ_CONSUMER_LOAD');
    expect((error as Error).message).toContain(join(dir, 'boom.mjs'));
    expect((error as Error).message).toContain('kaboom at import');
  });

  it('refuses duplicate ids across files and invalid definitions', async () => {
    const dup = dirWith({
      'a.mjs': `export default { id: 'same', channels: ['x'], ${handler} };`,
      'b.mjs': `export default { id: 'same', channels: ['y'], ${handler} };`,
    });
    await expect(loadConsumersDir(dup)).rejects.toThrow(/duplicate consumer id "same"/);
    const bad = dirWith({ 'c.mjs': `export default { id: 'c', channels: ['x'] };` });
    await expect(loadConsumersDir(bad)).rejects.toThrow(/c\.mjs: consumer "c": handle/);
  });

  it('refuses a missing directory', async () => {
    await expect(loadConsumersDir('/definitely/not/here')).rejects.toThrow(
      /consumers-dir: cannot read \/definitely\/not\/here/,
    );
  });
});
