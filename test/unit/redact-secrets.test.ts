/** Every form of password pg and ioredis accept is redacted, and nothing else is touched. */
import { Writable } from 'node:stream';
import { describe, expect, it } from 'vitest';
import { createLogger, redactSecrets } from '../../src/log.js';

describe('redactSecrets', () => {
  const cases: Array<[string, string]> = [
    ['postgres://app:s3cr3t@db:5432/x', 'postgres://app:***@db:5432/x'],
    ['postgresql://app:p@ss@db/x', 'postgresql://app:***@db/x'],
    ['postgres://app@db/x?password=s3cr3t', 'postgres://app@db/x?password=***'],
    [
      'postgres://app@db/x?sslmode=require&password=s3cr3t&x=1',
      'postgres://app@db/x?sslmode=require&password=***&x=1',
    ],
    ['postgres://app@db/x?sslpassword=s3cr3t', 'postgres://app@db/x?sslpassword=***'],
    ["host=db user=app password='s3 cr3t' dbname=x", 'host=db user=app password=*** dbname=x'],
    ['host=db password=s3cr3t', 'host=db password=***'],
    ['redis://:s3cr3t@127.0.0.1:6379', 'redis://:***@127.0.0.1:6379'],
    ['rediss://default:s3cr3t@cache:6380/0', 'rediss://default:***@cache:6380/0'],
    ['redis://127.0.0.1:6379/0?password=s3cr3t', 'redis://127.0.0.1:6379/0?password=***'],
    ['redis://:a@h1:7000,redis://:b@h2:7001', 'redis://:***@h1:7000,redis://:***@h2:7001'],
    [
      'cannot connect to Postgres at postgres://app:s3cr3t@db/x: timeout',
      'cannot connect to Postgres at postgres://app:***@db/x: timeout',
    ],
  ];
  for (const [input, output] of cases) {
    it(`redacts ${input}`, () => {
      expect(redactSecrets(input)).toBe(output);
      expect(redactSecrets(input)).not.toMatch(/s3cr3t|s3 cr3t|p@ss/);
    });
  }
  it('leaves text without passwords alone', () => {
    for (const text of [
      'postgres://app@db/x',
      'redis://127.0.0.1:6379',
      'user=app host=db',
      'a=b&c=d',
    ]) {
      expect(redactSecrets(text)).toBe(text);
    }
  });
});

describe('createLogger', () => {
  it('redacts passwords in every field and in the message, even where the caller forgot', () => {
    let out = '';
    const destination = new Writable({
      write(chunk: Buffer, _enc, done) {
        out += chunk.toString();
        done();
      },
    });
    const log = createLogger({ destination });
    log.warn(
      {
        err: 'connect failed: postgres://app@db/x?password=hunter2',
        nested: { url: 'redis://:hunter2@r' },
      },
      'while using rediss://u:hunter2@r',
    );
    log.error({ err: new Error('bad url postgres://a:hunter2@db/x') }, 'failed');
    expect(out).not.toContain('hunter2');
    expect(out).toContain('password=***');
    expect(out).toContain('rediss://u:***@r');
    expect(out).toContain('postgres://a:***@db/x');
  });
});
