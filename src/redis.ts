import { Redis } from 'ioredis';
import { redactSecrets, type Logger } from './log.js';

/**
 * Opens an ioredis connection suitable for BullMQ (workers need `maxRetriesPerRequest: null`).
 * It reconnects forever with capped backoff; errors are logged (rate-limited), never thrown.
 */
export function createRedis(url: string, log: Logger, name: string): Redis {
  const redis = new Redis(url, {
    maxRetriesPerRequest: null,
    connectionName: `pgq-bridge:${name}`,
    retryStrategy: (times) => Math.min(100 * 2 ** Math.min(times, 6), 5000),
  });
  let lastLogged = 0;
  redis.on('error', (error: Error) => {
    const now = Date.now();
    if (now - lastLogged < 5000) return;
    lastLogged = now;
    log.warn(
      { err: redactSecrets(error.message), redis: name },
      'redis connection error; retrying',
    );
  });
  return redis;
}

/** BullMQ loses jobs silently under any eviction policy but `noeviction`: say so loudly. */
export async function checkEvictionPolicy(redis: Redis, log: Logger): Promise<string | undefined> {
  try {
    const reply = (await redis.config('GET', 'maxmemory-policy')) as string[];
    const policy = reply[1];
    if (policy && policy !== 'noeviction') {
      log.warn(
        { maxmemoryPolicy: policy },
        `Redis maxmemory-policy is "${policy}": Redis may evict BullMQ jobs. Set maxmemory-policy noeviction (reconcile --verify recovers evicted jobs)`,
      );
    }
    return policy;
  } catch {
    // CONFIG may be disabled (managed Redis); nothing to check then.
    return undefined;
  }
}

/** Disconnects without waiting for pending replies (used at shutdown, after queues closed). */
export async function closeRedis(redis: Redis): Promise<void> {
  try {
    await redis.quit();
  } catch {
    redis.disconnect();
  }
}
