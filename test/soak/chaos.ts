/**
 * The chaos driver: at random intervals it injects one fault at a time, cycling through every
 * kind in a shuffled order so that each kind occurs (roughly equally often) in any run long
 * enough for one round.
 */
import { execFile } from 'node:child_process';
import type { Stack } from './stack.js';
import { ENQUEUE_TIMEOUT_S, type ProcessSet } from './processes.js';
import type { CutMode } from './proxy.js';
import { CONSUMERS } from './consumers.js';
import type { RollingDeploys } from './deploy.js';

/** What a listener logs when Redis did not take a batch within the enqueue timeout. */
const ENQUEUE_TIMEOUT_MSG = 'Redis did not take the batch in time';

/** The kinds of fault the driver injects. */
export const FAULT_KINDS = [
  'kill-listener',
  'kill-worker',
  'restart-redis',
  'restart-postgres',
  'terminate-backends',
  'cut-postgres',
  'cut-redis',
  'kill-listener-after-add',
  'enqueue-timeout-after-accept',
  'partial-redis-loss',
  'rolling-deploy',
] as const;
export type FaultKind = (typeof FAULT_KINDS)[number];

/** One injected fault. Times are epoch ms (the same clock as Postgres' clock_timestamp()). */
export interface Fault {
  kind: FaultKind;
  /** What exactly was done (mode, victim pid, how long). */
  detail: string;
  startedAt: number;
  /** When the fault was over: the server back, the path healed, the replacement ready. */
  endedAt: number;
}

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

function between(min: number, max: number): number {
  return min + Math.random() * (max - min);
}

function pick<T>(items: readonly T[]): T {
  return items[Math.floor(Math.random() * items.length)];
}

function shuffled<T>(items: readonly T[]): T[] {
  const out = [...items];
  for (let i = out.length - 1; i > 0; i--) {
    const j = Math.floor(Math.random() * (i + 1));
    [out[i], out[j]] = [out[j], out[i]];
  }
  return out;
}

/** Options of {@link runChaos}. */
export interface ChaosOptions {
  stack: Stack;
  processes: ProcessSet;
  deploys: RollingDeploys;
  /** Stop injecting (after the fault in progress) at this time (epoch ms). */
  until: number;
  /** Pause between two faults, in ms: uniform in [min, max]. */
  gapMs: [number, number];
  /**
   * Whether the bridge has recovered from every fault so far. Before its pause, the driver waits
   * for it up to `settleMs`, so that most recoveries are measured one fault at a time.
   */
  isSettled(): boolean;
  settleMs: number;
  /** The kinds to inject (default: every kind). */
  kinds?: readonly FaultKind[];
  /** Called when a fault is over. */
  onFault(fault: Fault): void;
  log(message: string): void;
}

/** Terminates every backend of the bridge's processes (`application_name` pgq-bridge ...). */
async function terminateBridgeBackends(stack: Stack): Promise<number> {
  const { rows } = await stack.pool.query<{ n: number }>(
    `SELECT count(*) FILTER (WHERE pg_terminate_backend(pid))::int AS n
       FROM pg_stat_activity
      WHERE application_name LIKE 'pgq-bridge%' AND pid <> pg_backend_pid()`,
  );
  return rows[0].n;
}

/** `redis-cli shutdown nosave`, then waits until the server process is gone. */
async function redisShutdownNosave(stack: Stack): Promise<void> {
  await new Promise<void>((resolve) => {
    // The server closes the connection as it exits, so redis-cli may report an error: fine.
    execFile(
      'redis-cli',
      ['-h', '127.0.0.1', '-p', String(stack.redis.port), 'shutdown', 'nosave'],
      () => resolve(),
    );
  });
  const deadline = Date.now() + 10_000;
  while (stack.redis.running && Date.now() < deadline) await sleep(20);
  if (stack.redis.running) await stack.redis.stop('kill');
}

/**
 * Unbridged rows (as Postgres shows them from outside: a listener's claim is not committed) that
 * already have a job in some consumer's queue: what a listener got into Redis but not committed.
 */
async function addedNotCommitted(stack: Stack): Promise<number> {
  const { rows } = await stack.pool.query<{ id: string }>(
    `SELECT id::text AS id FROM ${stack.schema}.notifications WHERE bridged_at IS NULL`,
  );
  if (rows.length === 0) return 0;
  const consumers = Object.keys(CONSUMERS);
  const pipeline = stack.redisClient.pipeline();
  for (const r of rows) {
    for (const c of consumers) pipeline.exists(`${stack.prefix}:${c}:n${r.id}`);
  }
  const replies = (await pipeline.exec()) ?? [];
  let n = 0;
  rows.forEach((_, i) => {
    const mine = replies.slice(i * consumers.length, (i + 1) * consumers.length);
    if (mine.some(([error, value]) => !error && value === 1)) n++;
  });
  return n;
}

/**
 * Deliveries of unbridged rows that the ledger records completed and whose job BullMQ already
 * removed (`removeOnComplete`): a listener that claims these rows now adds fresh jobs for them,
 * which only the ledger can stop from running again.
 */
async function completedAndRemoved(stack: Stack): Promise<number> {
  const { rows } = await stack.pool.query<{ consumer_id: string; id: string }>(
    `SELECT d.consumer_id, n.id::text AS id FROM ${stack.schema}.notifications n
       JOIN ${stack.schema}.deliveries d ON d.notification_id = n.id AND d.status = 'completed'
      WHERE n.bridged_at IS NULL`,
  );
  if (rows.length === 0) return 0;
  const pipeline = stack.redisClient.pipeline();
  for (const r of rows) pipeline.exists(`${stack.prefix}:${r.consumer_id}:n${r.id}`);
  const replies = (await pipeline.exec()) ?? [];
  return replies.filter(([error, value]) => !error && value === 0).length;
}

/** A random sample of up to `max` items, about `share` of them. */
function sample<T>(items: readonly T[], share: number, max: number): T[] {
  return shuffled(items).slice(0, Math.min(max, Math.ceil(items.length * share)));
}

/**
 * Partial Redis loss in 2 consumer queues picked at random: some entries of the wait, active,
 * delayed and completed lists/sets removed (their jobs then sit in no state), and some job hashes
 * deleted (their ids then point at nothing). Not everything: the rest of the queue lives on.
 */
async function partialRedisLoss(stack: Stack): Promise<string> {
  const r = stack.redisClient;
  const parts: string[] = [];
  for (const consumer of shuffled(Object.keys(CONSUMERS)).slice(0, 2)) {
    const key = (suffix: string) => `${stack.prefix}:${consumer}:${suffix}`;
    const counts: string[] = [];
    for (const list of ['wait', 'active']) {
      const ids = sample(await r.lrange(key(list), 0, -1), 0.2, 30);
      for (const id of ids) await r.lrem(key(list), 1, id);
      counts.push(`${list} ${ids.length}`);
    }
    for (const zset of ['delayed', 'completed']) {
      const ids = sample(await r.zrange(key(zset), '0', '-1'), 0.2, 30);
      if (ids.length > 0) await r.zrem(key(zset), ...ids);
      counts.push(`${zset} ${ids.length}`);
    }
    const live = [
      ...(await r.lrange(key('wait'), 0, -1)),
      ...(await r.zrange(key('delayed'), '0', '-1')),
      ...(await r.zrange(key('completed'), '0', '-1')),
    ];
    const hashes = sample(live, 0.2, 30);
    if (hashes.length > 0) await r.del(...hashes.map((id) => key(id)));
    counts.push(`hashes ${hashes.length}`);
    parts.push(`${consumer}: ${counts.join(', ')}`);
  }
  return `removed ${parts.join('; ')}`;
}

/** Injects one fault of `kind`; resolves with it once it is over. */
export async function injectFault(
  kind: FaultKind,
  stack: Stack,
  processes: ProcessSet,
  deploys: RollingDeploys,
): Promise<Fault> {
  const startedAt = Date.now();
  let detail: string;
  switch (kind) {
    case 'kill-listener':
    case 'kill-worker': {
      const role = kind === 'kill-listener' ? 'listen' : 'work';
      const victim = await processes.killOne(role);
      const replacement = await processes.start(role);
      detail = `kill -9 ${role} pid ${victim?.pid ?? '(none running)'}; new pid ${replacement.pid}`;
      break;
    }
    case 'restart-redis': {
      // kill -9 or `redis-cli shutdown nosave`: either way no RDB/AOF, every job in Redis is lost.
      const mode = pick(['kill', 'shutdown'] as const);
      const downMs = Math.round(between(200, 3000));
      if (mode === 'kill') await stack.redis.stop('kill');
      else await redisShutdownNosave(stack);
      await sleep(downMs);
      await stack.redis.restart();
      detail = `redis stopped (${mode === 'kill' ? 'kill -9' : 'redis-cli shutdown nosave'}), down ${downMs} ms, restarted empty`;
      break;
    }
    case 'restart-postgres': {
      // fast = clean shutdown; immediate = like a crash (recovery on start).
      const mode = pick(['fast', 'immediate'] as const);
      const downMs = Math.round(between(200, 3000));
      await stack.postgres.stop(mode);
      await sleep(downMs);
      await stack.postgres.restart();
      detail = `postgres stopped (${mode}), down ${downMs} ms, restarted`;
      break;
    }
    case 'terminate-backends': {
      const n = await terminateBridgeBackends(stack);
      detail = `pg_terminate_backend of ${n} bridge backends`;
      break;
    }
    case 'kill-listener-after-add': {
      // Replies held: the listeners' addBulk reaches Redis, their COMMIT waits for its answer.
      // Every listener is killed in that window (their claims roll back), the path heals, the
      // workers run (and, with removeOnComplete, remove) the jobs, and only then new listeners
      // claim the rows again and add the same job ids: fresh jobs that only the ledger can stop.
      stack.redisProxy.holdReplies();
      await sleep(between(1000, 2000));
      const added = await addedNotCommitted(stack).catch(() => -1);
      const victims = await processes.killAll('listen');
      stack.redisProxy.heal();
      await sleep(between(1500, 3000));
      const readds = await completedAndRemoved(stack).catch(() => -1);
      const fresh = (await Promise.all(victims.map(() => processes.start('listen')))).map(
        (p) => p.pid,
      );
      detail =
        `Redis replies held, ${added} rows in Redis but not committed, kill -9 listen pids ` +
        `${victims.map((v) => v.pid).join(', ')}; new pids ${fresh.join(', ')} (to re-add ` +
        `${readds} deliveries completed and removed meanwhile)`;
      break;
    }
    case 'enqueue-timeout-after-accept': {
      // Replies held past the listeners' enqueue timeout: Redis accepted the batch, the listener
      // gave up on it and rolled back; the rows are claimed again later (same job ids).
      const before = processes.countLines('listen', ENQUEUE_TIMEOUT_MSG);
      const holdMs = Math.round(ENQUEUE_TIMEOUT_S * 1000 + between(1000, 2500));
      stack.redisProxy.holdReplies();
      await sleep(holdMs);
      const added = await addedNotCommitted(stack).catch(() => -1);
      stack.redisProxy.heal();
      await sleep(500);
      const timeouts = processes.countLines('listen', ENQUEUE_TIMEOUT_MSG) - before;
      detail = `Redis replies held ${holdMs} ms (enqueue timeout ${ENQUEUE_TIMEOUT_S} s): ${added} rows in Redis but not committed, ${timeouts} enqueue timeouts logged`;
      break;
    }
    case 'partial-redis-loss': {
      detail = await partialRedisLoss(stack);
      break;
    }
    case 'rolling-deploy': {
      detail = await deploys.step();
      break;
    }
    case 'cut-postgres':
    case 'cut-redis': {
      const proxy = kind === 'cut-postgres' ? stack.pgProxy : stack.redisProxy;
      const mode: CutMode = pick(['reset', 'blackhole'] as const);
      const cutMs = Math.round(between(2000, 6000));
      proxy.cut(mode);
      await sleep(cutMs);
      proxy.heal();
      detail = `${mode} for ${cutMs} ms`;
      break;
    }
  }
  return { kind, detail, startedAt, endedAt: Date.now() };
}

/** Injects faults until `until`; resolves with every fault injected. */
export async function runChaos(options: ChaosOptions): Promise<Fault[]> {
  const faults: Fault[] = [];
  let round: FaultKind[] = [];
  for (;;) {
    const settleBy = Math.min(Date.now() + options.settleMs, options.until);
    while (!options.isSettled() && Date.now() < settleBy) await sleep(250);
    const gap = between(options.gapMs[0], options.gapMs[1]);
    if (Date.now() + gap >= options.until) break;
    await sleep(gap);
    if (round.length === 0) round = shuffled(options.kinds ?? FAULT_KINDS);
    const kind = round.shift()!;
    const fault = await injectFault(kind, options.stack, options.processes, options.deploys);
    faults.push(fault);
    options.onFault(fault);
    options.log(
      `fault ${faults.length}: ${kind} (${fault.detail}), ${((fault.endedAt - fault.startedAt) / 1000).toFixed(1)} s`,
    );
  }
  return faults;
}
