/**
 * The chaos driver: at random intervals it injects one fault at a time, cycling through every
 * kind in a shuffled order so that each kind occurs (roughly equally often) in any run long
 * enough for one round.
 */
import { execFile } from 'node:child_process';
import type { Stack } from './stack.js';
import type { ProcessSet } from './processes.js';
import type { CutMode } from './proxy.js';

/** The kinds of fault the driver injects. */
export const FAULT_KINDS = [
  'kill-listener',
  'kill-worker',
  'restart-redis',
  'restart-postgres',
  'terminate-backends',
  'cut-postgres',
  'cut-redis',
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

/** Injects one fault of `kind`; resolves with it once it is over. */
export async function injectFault(
  kind: FaultKind,
  stack: Stack,
  processes: ProcessSet,
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
    if (round.length === 0) round = shuffled(FAULT_KINDS);
    const kind = round.shift()!;
    const fault = await injectFault(kind, options.stack, options.processes);
    faults.push(fault);
    options.onFault(fault);
    options.log(
      `fault ${faults.length}: ${kind} (${fault.detail}), ${((fault.endedAt - fault.startedAt) / 1000).toFixed(1)} s`,
    );
  }
  return faults;
}
