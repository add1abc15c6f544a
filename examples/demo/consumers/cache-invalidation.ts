/** Drops a user's cached copy from Redis when the user changes or is deleted. */
import { Redis } from 'ioredis';
import { defineConsumer } from 'pgq-bridge';
import { USERS_CHANNEL, cacheKey } from '../shared.js';

let redis: Redis | undefined;

export default defineConsumer({
  id: 'demo-cache-invalidation',
  channels: [USERS_CHANNEL],
  startFrom: 'beginning',
  async handle(n) {
    // A new user cannot be cached yet; only updates and deletes make a cached copy stale.
    if (!n.isUpdate() && !n.isDelete()) return { skipped: n.change?.action };
    redis ??= new Redis(process.env.REDIS_URL ?? 'redis://127.0.0.1:6379');
    const key = cacheKey(n.change?.recordId);
    const removed = await redis.del(key);
    const why = n.isUpdate() ? `changed ${n.changedColumns().join(', ')}` : 'deleted';
    console.log(`[cache-invalidation] ${key} invalidated (${why}; ${removed} key removed)`);
    return { key, removed };
  },
});
