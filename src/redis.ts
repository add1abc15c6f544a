import { Cluster, Redis, type RedisOptions } from 'ioredis';
import { PgqError } from './errors.js';
import { redactSecrets, type Logger } from './log.js';

/** A BullMQ connection: one Redis server or a Redis Cluster. */
export type RedisConnection = Redis | Cluster;

/** The settings that decide how to reach Redis. */
export interface RedisSettings {
  /** One Redis URL, or several comma-separated node URLs of a Redis Cluster. */
  redisUrl: string;
  /** Treat `redisUrl` as a seed node of a Redis Cluster even if it is a single URL. */
  redisCluster?: boolean;
}

function nodeUrls(redisUrl: string): string[] {
  return redisUrl
    .split(',')
    .map((part) => part.trim())
    .filter(Boolean);
}

/** Whether these settings address a Redis Cluster (several nodes, or `--redis-cluster`). */
export function isClusterSetting(settings: RedisSettings): boolean {
  return settings.redisCluster === true || nodeUrls(settings.redisUrl).length > 1;
}

/** Whether a prefix already holds a Redis Cluster hash tag (a `{...}` with something inside). */
export function hasHashTag(prefix: string): boolean {
  return /\{[^}]+\}/.test(prefix);
}

/**
 * The BullMQ key prefix of one consumer's queue. BullMQ names every key of a queue
 * `<prefix>:<queue>:<suffix>` and its Lua scripts touch several of them at once, which a Redis
 * Cluster refuses unless they hash to one slot. So on a cluster each consumer's queue gets its
 * own hash tag, `{<prefix>:<consumer>}` (keys `{pgq:mail}:mail:wait`, ...): one queue's keys stay
 * in one slot while different consumers' queues spread over the nodes. The queue name stays the
 * consumer id (Bull Board, logs and `job.queueName` show it as before).
 *
 * Unchanged, and so the same layout as before: on a single Redis the prefix as given; on a
 * cluster, a prefix that holds a hash tag itself (`--prefix '{pgq}'`: every queue in that one
 * slot, the layout of pgq-bridge 0.1 on a cluster; see README, "Running at scale").
 *
 * `consumerId` is required on a cluster (there is no one prefix for all queues there).
 */
export function queuePrefix(
  settings: RedisSettings & { prefix: string },
  consumerId?: string,
): string {
  if (!isClusterSetting(settings) || hasHashTag(settings.prefix)) return settings.prefix;
  if (consumerId === undefined) {
    throw new PgqError(
      'PGQ_REDIS_CLUSTER',
      'queuePrefix: on a Redis Cluster every consumer queue has its own prefix: pass the consumer id',
    );
  }
  return `{${settings.prefix}:${consumerId}}`;
}

/**
 * The prefix every queue shared on a Redis Cluster before queues had their own hash tag
 * (`{pgq}`), or undefined where nothing changed (a single Redis, or a prefix with its own tag).
 */
export function singleSlotPrefix(settings: RedisSettings & { prefix: string }): string | undefined {
  if (!isClusterSetting(settings) || hasHashTag(settings.prefix)) return undefined;
  return `{${settings.prefix}}`;
}

function retryDelay(times: number): number {
  return Math.min(100 * 2 ** Math.min(times, 6), 5000);
}

/** Options shared by single connections and cluster nodes, taken from a redis:// URL. */
function nodeOptions(url: URL, name: string): RedisOptions {
  return {
    // BullMQ workers need it: a command waits for a reconnect instead of failing.
    maxRetriesPerRequest: null,
    connectionName: `pgq-bridge:${name}`,
    ...(url.username ? { username: decodeURIComponent(url.username) } : {}),
    ...(url.password ? { password: decodeURIComponent(url.password) } : {}),
    ...(url.protocol === 'rediss:' ? { tls: {} } : {}),
  };
}

/**
 * Opens the Redis connection used with BullMQ. This is the only place pgq-bridge builds one:
 * a single server, or an ioredis `Cluster` when `redisUrl` lists several nodes or `redisCluster`
 * is set. It reconnects forever with capped backoff; errors are logged (rate-limited), never
 * thrown. A plain URL string is accepted for a single server only.
 */
export function createRedis(url: string, log: Logger, name: string): Redis;
export function createRedis(settings: RedisSettings, log: Logger, name: string): RedisConnection;
export function createRedis(
  target: string | RedisSettings,
  log: Logger,
  name: string,
): RedisConnection {
  if (typeof target === 'string' && nodeUrls(target).length > 1) {
    // The string form promises a single-server `Redis`; a cluster needs the settings form.
    throw new PgqError(
      'PGQ_REDIS_CLUSTER',
      'createRedis: several Redis nodes given as a plain URL; pass { redisUrl } for a Redis Cluster',
    );
  }
  const settings = typeof target === 'string' ? { redisUrl: target } : target;
  let redis: RedisConnection;
  if (isClusterSetting(settings)) {
    const urls = nodeUrls(settings.redisUrl).map((u) => new URL(u));
    redis = new Cluster(
      urls.map((u) => ({ host: u.hostname, port: Number(u.port || 6379) })),
      {
        redisOptions: nodeOptions(urls[0], name),
        clusterRetryStrategy: retryDelay,
        // Keep BullMQ's multi-key scripts on masters: replicas may lag.
        scaleReads: 'master',
      },
    );
  } else {
    redis = new Redis(settings.redisUrl, {
      ...nodeOptions(new URL(settings.redisUrl), name),
      retryStrategy: retryDelay,
    });
  }
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

async function policyOf(node: Redis): Promise<string | undefined> {
  const reply = (await node.config('GET', 'maxmemory-policy')) as string[];
  return reply[1];
}

/** Options of {@link checkEvictionPolicy}. */
export interface EvictionCheckOptions {
  /** Throw `PGQ_REDIS_EVICTION` instead of only warning. */
  strict?: boolean;
}

/**
 * BullMQ loses jobs silently under any eviction policy but `noeviction`: says so loudly (an
 * error-level log line), or refuses with `strict`. Resolves with the policy found (the first
 * offending one on a cluster), or undefined when it cannot be read (CONFIG disabled on managed
 * Redis, or Redis unreachable).
 */
export async function checkEvictionPolicy(
  redis: RedisConnection,
  log: Logger,
  options: EvictionCheckOptions = {},
): Promise<string | undefined> {
  let policy: string | undefined;
  try {
    // A cluster knows its masters only once it has read the slot map.
    if (redis instanceof Cluster && redis.status !== 'ready') {
      await new Promise((resolve) => redis.once('ready', resolve));
    }
    const nodes = redis instanceof Cluster ? redis.nodes('master') : [redis];
    const policies = await Promise.all(nodes.map((node) => policyOf(node)));
    policy = policies.find((p) => p && p !== 'noeviction') ?? policies[0];
  } catch {
    return undefined;
  }
  if (policy && policy !== 'noeviction') {
    const message =
      `Redis maxmemory-policy is "${policy}": Redis may evict BullMQ jobs and lose notifications. ` +
      'Set maxmemory-policy noeviction (reconcile --verify recovers evicted jobs)';
    if (options.strict) {
      throw new PgqError('PGQ_REDIS_EVICTION', `${message}; refused because of --strict`);
    }
    log.error({ maxmemoryPolicy: policy, check: 'redis-eviction' }, message);
  }
  return policy;
}

/** Disconnects without waiting for pending replies (used at shutdown, after queues closed). */
export async function closeRedis(redis: RedisConnection): Promise<void> {
  try {
    await redis.quit();
  } catch {
    redis.disconnect();
  }
}
