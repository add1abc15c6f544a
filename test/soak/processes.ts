/**
 * The bridge's processes under test: the real CLI (`node bin/pgq-bridge.js listen` and
 * `work --consumers-dir ...`), several of each, reaching Postgres and Redis through the proxies.
 * Their output is kept and written to the soak's logs dir.
 */
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { startCli, type CliHandle } from '../support/cli.js';

/** The listeners' `--enqueue-timeout` (s): short, so that a reply hold can outlast it. */
export const ENQUEUE_TIMEOUT_S = 3;

/** A kind of bridge process. */
export type Role = 'listen' | 'work';

/** A bridge process the soak started. */
export interface BridgeProcess {
  role: Role;
  handle: CliHandle;
  pid: number;
  startedAt: number;
  /** The consumers dir a `work` process runs (the code version it runs). */
  consumersDir?: string;
  /** When the soak killed it (kill -9), if it did. */
  killedAt?: number;
  /** When the soak stopped it gracefully (SIGTERM, a rolling deploy), if it did. */
  stoppedAt?: number;
  /** When the soak saw it exit after a graceful stop. */
  exitedAt?: number;
}

function msgOf(line: { json?: Record<string, unknown> }): string | undefined {
  const msg = line.json?.msg;
  return typeof msg === 'string' ? msg : undefined;
}

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/** Starts, kills and stops the bridge's processes. */
export class ProcessSet {
  /** Every process ever started, in start order. */
  readonly all: BridgeProcess[] = [];

  /** Problems seen by {@link stop}: a graceful stop that did not exit 0. */
  readonly stopProblems: string[] = [];

  /**
   * @param consumersDir the consumers dir new `work` processes run (the current code version;
   *   a rolling deploy changes it)
   */
  constructor(
    private readonly env: NodeJS.ProcessEnv,
    public consumersDir: string,
    private readonly consumerCount: number,
    private readonly logsDir: string,
  ) {}

  /** Processes of `role` still running. */
  running(role: Role): BridgeProcess[] {
    return this.all.filter((p) => p.role === role && !p.handle.exited);
  }

  /**
   * Pids of worker processes that are gone, with a time by which every handler run in them had
   * ended: the kill -9, or when the soak saw it exit after a graceful stop.
   */
  workerEnds(): Map<number, number> {
    return new Map(
      this.all
        .filter((p) => p.role === 'work' && (p.killedAt ?? p.exitedAt) !== undefined)
        .map((p) => [p.pid, (p.killedAt ?? p.exitedAt)!]),
    );
  }

  /** Pids of worker processes the soak killed, with the kill time. */
  killedWorkers(): Map<number, number> {
    return new Map(
      this.all.filter((p) => p.role === 'work' && p.killedAt).map((p) => [p.pid, p.killedAt!]),
    );
  }

  /**
   * Starts one process of `role` (a `work` process on `consumersDir`, default the current one)
   * and waits until it is ready (up to `timeoutMs`).
   */
  async start(
    role: Role,
    consumersDir = this.consumersDir,
    timeoutMs = 60_000,
  ): Promise<BridgeProcess> {
    const args =
      role === 'listen'
        ? ['listen', '--enqueue-timeout', String(ENQUEUE_TIMEOUT_S)]
        : ['work', '--consumers-dir', consumersDir, '--shutdown-timeout', '10'];
    const handle = startCli(args, { env: this.env });
    const proc: BridgeProcess = { role, handle, pid: handle.pid, startedAt: Date.now() };
    if (role === 'work') proc.consumersDir = consumersDir;
    this.all.push(proc);
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      if (handle.exited) {
        throw new Error(`${role} (pid ${proc.pid}) exited during start: ${handle.stderr()}`);
      }
      const msgs = handle.lines().map(msgOf);
      const ready =
        role === 'listen'
          ? msgs.includes('LISTEN connection ready')
          : msgs.filter((m) => m === 'consumer registered; worker started').length >=
            this.consumerCount;
      if (ready) return proc;
      if (Date.now() > deadline) {
        throw new Error(`${role} (pid ${proc.pid}) not ready after ${timeoutMs} ms`);
      }
      await sleep(50);
    }
  }

  /** kill -9 of one running process of `role` (picked at random); resolves when it is gone. */
  async killOne(role: Role): Promise<BridgeProcess | undefined> {
    const candidates = this.running(role);
    if (candidates.length === 0) return undefined;
    const victim = candidates[Math.floor(Math.random() * candidates.length)];
    victim.killedAt = Date.now();
    victim.handle.kill('SIGKILL');
    await victim.handle.waitForExit(10_000).catch(() => undefined);
    return victim;
  }

  /** SIGTERM to `proc` (a graceful stop); resolves when it exited (a non-zero exit is noted). */
  async stop(proc: BridgeProcess, timeoutMs = 30_000): Promise<void> {
    proc.stoppedAt = Date.now();
    proc.handle.kill('SIGTERM');
    try {
      const exit = await proc.handle.waitForExit(timeoutMs);
      proc.exitedAt = Date.now();
      if (exit.code !== 0) {
        this.stopProblems.push(`${proc.role} pid ${proc.pid} stopped with ${JSON.stringify(exit)}`);
      }
    } catch {
      this.stopProblems.push(`${proc.role} pid ${proc.pid} did not stop within ${timeoutMs} ms`);
      proc.handle.killGroup('SIGKILL');
    }
  }

  /** kill -9 of every running process of `role`; resolves when they are gone. */
  async killAll(role: Role): Promise<BridgeProcess[]> {
    const victims = this.running(role);
    const at = Date.now();
    for (const victim of victims) {
      victim.killedAt = at;
      victim.handle.kill('SIGKILL');
    }
    await Promise.all(victims.map((v) => v.handle.waitForExit(10_000).catch(() => undefined)));
    return victims;
  }

  /** How many log lines (`msg`) of every process of `role` so far contain `text`. */
  countLines(role: Role, text: string): number {
    let n = 0;
    for (const p of this.all) {
      if (p.role !== role) continue;
      for (const line of p.handle.lines()) if (msgOf(line)?.includes(text)) n++;
    }
    return n;
  }

  /** SIGTERM to every running process; resolves with those that did not exit 0. */
  async stopAll(timeoutMs = 30_000): Promise<string[]> {
    const problems: string[] = [];
    await Promise.all(
      this.all
        .filter((p) => !p.handle.exited)
        .map(async (p) => {
          p.stoppedAt = Date.now();
          p.handle.kill('SIGTERM');
          try {
            const exit = await p.handle.waitForExit(timeoutMs);
            p.exitedAt = Date.now();
            if (exit.code !== 0)
              problems.push(`${p.role} pid ${p.pid} exited ${JSON.stringify(exit)}`);
          } catch {
            problems.push(`${p.role} pid ${p.pid} did not stop within ${timeoutMs} ms`);
            p.handle.killGroup('SIGKILL');
          }
        }),
    );
    return problems;
  }

  /** Writes each process's output to `<logsDir>/<role>-<pid>.log`. */
  writeLogs(): void {
    for (const p of this.all) {
      writeFileSync(
        join(this.logsDir, `${p.role}-${p.pid}.log`),
        p.handle.stdout() + p.handle.stderr(),
      );
    }
  }

  /** Every log line of level error or above (pino 50+), with its process. */
  errorLines(): string[] {
    const out: string[] = [];
    for (const p of this.all) {
      for (const line of p.handle.lines()) {
        const level = Number(line.json?.level ?? 0);
        if (level >= 50) out.push(`${p.role} ${p.pid}: ${line.text}`);
      }
    }
    return out;
  }
}
