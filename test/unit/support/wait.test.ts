import { describe, expect, it } from 'vitest';
import { waitFor } from '../../support/wait.js';
import { redactUrl } from '../../support/redact.js';
import { randomId } from '../../support/env.js';

describe('waitFor', () => {
  it('resolves once the predicate is true', async () => {
    let calls = 0;
    await waitFor(() => ++calls >= 3, { intervalMs: 5 });
    expect(calls).toBe(3);
  });

  it('accepts async predicates and treats throws as false', async () => {
    let calls = 0;
    await waitFor(
      async () => {
        calls++;
        if (calls < 2) throw new Error('not yet');
        return true;
      },
      { intervalMs: 5 },
    );
    expect(calls).toBe(2);
  });

  it('rejects with the message and the last error after the timeout', async () => {
    await expect(
      waitFor(
        () => {
          throw new Error('boom');
        },
        { timeoutMs: 50, intervalMs: 10, message: 'the thing' },
      ),
    ).rejects.toThrow(/Timed out after \d+ ms waiting for the thing \(last error: boom\)/);
  });
});

describe('redactUrl', () => {
  it('hides passwords and keeps the rest', () => {
    expect(redactUrl('postgres://app:s3cr3t@db:5432/x')).toBe('postgres://app:***@db:5432/x');
    expect(redactUrl('redis://:pw@127.0.0.1:6379')).toBe('redis://:***@127.0.0.1:6379');
    expect(redactUrl('postgres://postgres@127.0.0.1/test')).toBe(
      'postgres://postgres@127.0.0.1/test',
    );
  });
});

describe('randomId', () => {
  it('is lowercase alnum of the requested length', () => {
    const ids = new Set(Array.from({ length: 100 }, () => randomId()));
    expect(ids.size).toBe(100);
    for (const id of ids) expect(id).toMatch(/^[a-z0-9]{8}$/);
  });
});
