export interface WaitForOptions {
  /** Give up after this long. Default 10 000 ms. */
  timeoutMs?: number;
  /** Pause between two checks. Default 100 ms. */
  intervalMs?: number;
  /** What is being waited for, quoted in the timeout error. */
  message?: string;
}

export function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/**
 * Calls `predicate` until it returns (or resolves to) true, then resolves. A predicate that throws
 * counts as false; its last error is quoted if time runs out. Rejects after `timeoutMs`.
 */
export async function waitFor(
  predicate: () => Promise<boolean> | boolean,
  options: WaitForOptions = {},
): Promise<void> {
  const { timeoutMs = 10_000, intervalMs = 100, message = 'condition' } = options;
  const started = Date.now();
  let lastError: unknown;
  for (;;) {
    try {
      if (await predicate()) return;
      lastError = undefined;
    } catch (error) {
      lastError = error;
    }
    const elapsed = Date.now() - started;
    if (elapsed >= timeoutMs) {
      const cause =
        lastError === undefined
          ? ''
          : ` (last error: ${lastError instanceof Error ? lastError.message : String(lastError)})`;
      throw new Error(`Timed out after ${elapsed} ms waiting for ${message}${cause}`, {
        cause: lastError,
      });
    }
    await sleep(Math.min(intervalMs, Math.max(0, timeoutMs - elapsed)));
  }
}
