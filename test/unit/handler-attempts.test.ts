import { describe, expect, it } from 'vitest';
import { Attempts, HandlerTimeoutError, ShutdownAbortError } from '../../src/consume/attempt.js';

const delay = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

describe('Attempts.run', () => {
  it('resolves with the handler result and leaves the signal alone', async () => {
    const attempts = new Attempts();
    let signal: AbortSignal | undefined;
    const result = await attempts.run(
      (ctx) => {
        signal = ctx.signal;
        return 42;
      },
      { timeoutMs: 1000, what: 'handler of x' },
    );
    expect(result).toBe(42);
    expect(signal?.aborted).toBe(false);
    expect(attempts.running).toBe(0);
  });

  it('passes the handler error through', async () => {
    const attempts = new Attempts();
    await expect(
      attempts.run(
        () => {
          throw new Error('boom');
        },
        { timeoutMs: undefined, what: 'handler of x' },
      ),
    ).rejects.toThrow('boom');
  });

  it('on timeout aborts the signal but settles only when the handler does, then fails', async () => {
    const attempts = new Attempts();
    let abortedAt = 0;
    let timeouts = 0;
    const start = Date.now();
    const run = attempts.run(
      async (ctx) => {
        ctx.signal.addEventListener('abort', () => (abortedAt = Date.now() - start));
        await delay(300); // ignores the signal: the attempt must wait for it anyway
        return 'late success';
      },
      { timeoutMs: 80, what: 'handler of x', onTimeout: () => timeouts++ },
    );
    const error = await run.catch((e: unknown) => e);
    const elapsed = Date.now() - start;
    expect(error).toBeInstanceOf(HandlerTimeoutError);
    expect((error as HandlerTimeoutError).code).toBe('PGQ_TIMEOUT');
    expect(abortedAt).toBeGreaterThanOrEqual(70);
    expect(abortedAt).toBeLessThan(250);
    expect(elapsed).toBeGreaterThanOrEqual(295);
    expect(timeouts).toBe(1);
    expect(attempts.running).toBe(0);
  });

  it('reports the timeout, not the AbortError, of a handler that honours its signal', async () => {
    const attempts = new Attempts();
    const error = await attempts
      .run(
        (ctx) =>
          new Promise((_, reject) =>
            ctx.signal.addEventListener('abort', () => reject(new Error('AbortError'))),
          ),
        { timeoutMs: 30, what: 'handler of x' },
      )
      .catch((e: unknown) => e);
    expect(error).toBeInstanceOf(HandlerTimeoutError);
  });

  it('abortAll aborts every running attempt with a shutdown reason', async () => {
    const attempts = new Attempts();
    const reasons: unknown[] = [];
    const runs = [1, 2, 3].map(() =>
      attempts.run(
        (ctx) =>
          new Promise<void>((resolve) =>
            ctx.signal.addEventListener('abort', () => {
              reasons.push(ctx.signal.reason);
              resolve();
            }),
          ),
        { timeoutMs: undefined, what: 'handler of x' },
      ),
    );
    expect(attempts.running).toBe(3);
    attempts.abortAll();
    await Promise.all(runs);
    expect(reasons).toHaveLength(3);
    for (const reason of reasons) expect(reason).toBeInstanceOf(ShutdownAbortError);
    expect(attempts.running).toBe(0);
  });
});
