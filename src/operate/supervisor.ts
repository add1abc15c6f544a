import cluster, { type Worker as ClusterWorker } from 'node:cluster';
import { EventEmitter } from 'node:events';
import { silentLogger, type Logger } from '../log.js';

/** The IPC message a supervisor sends a child to ask for a graceful stop. */
export const SHUTDOWN_MESSAGE = 'pgq-bridge:shutdown';

/** Options of {@link createSupervisor}. */
export interface SupervisorOptions {
  /** How many child processes to keep running. */
  processes: number;
  /** Script each child runs (the CLI passes its own entry point). */
  exec: string;
  /** Arguments of each child (the CLI passes `work --worker` and the user's other flags). */
  args: string[];
  /** Node options of each child (default: this process's `execArgv`). */
  execArgv?: string[];
  /** Restart a child that crashes (default true); when false, a crash stops everything. */
  restartOnFailure?: boolean;
  /** How long a child may take to drain after the stop request (default 30 s). */
  shutdownTimeoutMs?: number;
  /** First restart delay (default 1 s); doubles per consecutive crash of a slot up to 30 s. */
  restartDelayMs?: number;
  /** A child that ran this long before crashing restarts with the first delay again (30 s). */
  stableAfterMs?: number;
  logger?: Logger;
}

/** A running supervisor (`work --processes N`). */
export interface Supervisor extends EventEmitter {
  /** Forks the children. */
  start(): void;
  /** Asks every child to drain and resolves with the exit code once all have exited. */
  stop(): Promise<number>;
  /**
   * Resolves with the exit code when the supervisor ends: 0 after a clean `stop()`, non-zero
   * when a child crashed with `restartOnFailure: false` or a child failed to drain.
   */
  readonly done: Promise<number>;
  /** Pids of the children currently running, by slot. */
  readonly pids: ReadonlyMap<number, number>;
  /** Restarts so far. */
  readonly restarts: number;
}

interface Slot {
  index: number;
  worker?: ClusterWorker;
  startedAt: number;
  crashes: number;
  timer?: NodeJS.Timeout;
}

/** Exit code that means "wrong usage": restarting cannot help. */
const USAGE_EXIT_CODE = 2;

class ProcessSupervisor extends EventEmitter implements Supervisor {
  readonly done: Promise<number>;
  restarts = 0;
  private resolveDone!: (code: number) => void;
  private readonly slots: Slot[] = [];
  private readonly log: Logger;
  private stopping: Promise<number> | undefined;
  private exitCode = 0;

  constructor(private readonly options: SupervisorOptions) {
    super();
    if (!Number.isInteger(options.processes) || options.processes < 1) {
      throw new RangeError(`processes must be a positive integer, got ${options.processes}`);
    }
    this.log = options.logger ?? silentLogger();
    this.done = new Promise((resolve) => (this.resolveDone = resolve));
  }

  get pids(): ReadonlyMap<number, number> {
    const pids = new Map<number, number>();
    for (const slot of this.slots) {
      const pid = slot.worker?.process.pid;
      if (pid !== undefined && !slot.worker?.isDead()) pids.set(slot.index, pid);
    }
    return pids;
  }

  start(): void {
    cluster.setupPrimary({
      exec: this.options.exec,
      args: this.options.args,
      execArgv: this.options.execArgv ?? process.execArgv,
      silent: false,
    });
    for (let i = 0; i < this.options.processes; i++) {
      const slot: Slot = { index: i, startedAt: 0, crashes: 0 };
      this.slots.push(slot);
      this.fork(slot);
    }
    this.log.info({ processes: this.options.processes }, 'supervisor started');
  }

  private fork(slot: Slot): void {
    slot.timer = undefined;
    slot.startedAt = Date.now();
    const worker = cluster.fork({ PGQ_WORKER_SLOT: String(slot.index) });
    slot.worker = worker;
    const pid = worker.process.pid;
    this.log.info({ slot: slot.index, childPid: pid }, 'worker process started');
    this.emit('fork', { slot: slot.index, pid });
    worker.on('exit', (code: number | null, signal: string | null) =>
      this.onExit(slot, worker, code, signal),
    );
  }

  private onExit(
    slot: Slot,
    worker: ClusterWorker,
    code: number | null,
    signal: string | null,
  ): void {
    if (slot.worker !== worker) return;
    slot.worker = undefined;
    const pid = worker.process.pid;
    const failed = code !== 0;
    this.emit('exit', { slot: slot.index, pid, code, signal });
    if (this.stopping) {
      if (failed) this.exitCode = 1;
      const fields = { slot: slot.index, childPid: pid, code, signal };
      if (failed) this.log.warn(fields, 'worker process exited during shutdown with a failure');
      else this.log.info(fields, 'worker process drained and exited');
      this.settleIfAllExited();
      return;
    }
    const fields = { slot: slot.index, childPid: pid, code, signal };
    if (code === USAGE_EXIT_CODE) {
      this.log.error(fields, 'worker process reported a usage error; stopping');
      this.exitCode = USAGE_EXIT_CODE;
      void this.stop(USAGE_EXIT_CODE);
      return;
    }
    if (failed && this.options.restartOnFailure === false) {
      this.log.error(fields, 'worker process crashed; stopping (--no-restart-on-failure)');
      void this.stop(typeof code === 'number' && code > 0 ? code : 1);
      return;
    }
    const stableAfter = this.options.stableAfterMs ?? 30_000;
    if (Date.now() - slot.startedAt >= stableAfter) slot.crashes = 0;
    slot.crashes++;
    const base = this.options.restartDelayMs ?? 1000;
    const delay = Math.min(base * 2 ** (slot.crashes - 1), 30_000);
    this.log[failed ? 'error' : 'warn'](
      { ...fields, restartInMs: delay },
      failed ? 'worker process crashed; restarting' : 'worker process exited; restarting',
    );
    this.restarts++;
    slot.timer = setTimeout(() => this.fork(slot), delay);
  }

  stop(exitCode = 0): Promise<number> {
    this.stopping ??= this.drain(exitCode);
    return this.stopping;
  }

  private async drain(exitCode: number): Promise<number> {
    this.exitCode = Math.max(this.exitCode, exitCode);
    const live = this.slots.filter((s) => {
      clearTimeout(s.timer);
      return s.worker && !s.worker.isDead();
    });
    this.log.info({ processes: live.length }, 'asking worker processes to drain');
    for (const slot of live) {
      const worker = slot.worker!;
      if (worker.isConnected()) worker.send(SHUTDOWN_MESSAGE);
      else worker.process.kill('SIGTERM');
    }
    // Children bound their own drain by the shutdown timeout; this is the backstop.
    const deadline = (this.options.shutdownTimeoutMs ?? 30_000) + 15_000;
    const killer = setTimeout(() => {
      for (const slot of this.slots) {
        if (slot.worker && !slot.worker.isDead()) {
          this.log.error({ slot: slot.index }, 'worker process did not drain in time; killing it');
          this.exitCode = 1;
          slot.worker.process.kill('SIGKILL');
        }
      }
    }, deadline);
    this.settleIfAllExited();
    const code = await this.done;
    clearTimeout(killer);
    return code;
  }

  private settleIfAllExited(): void {
    if (this.slots.every((s) => !s.worker || s.worker.isDead())) {
      this.log.info({ exitCode: this.exitCode }, 'supervisor stopped');
      this.resolveDone(this.exitCode);
    }
  }
}

/**
 * Creates a supervisor that keeps `processes` child processes running (`work --processes N`):
 * a child that crashes is restarted with backoff (unless `restartOnFailure` is false, which
 * ends the supervisor with a non-zero code); `stop()` asks every child to drain gracefully.
 * Children are forked with `node:cluster`, so they share this process's stdout and stderr.
 */
export function createSupervisor(options: SupervisorOptions): Supervisor {
  return new ProcessSupervisor(options);
}

/**
 * In a supervised child: resolves when the supervisor asks for a graceful stop, or when the
 * supervisor is gone (IPC channel closed), so a child never outlives it. Never resolves in a
 * process without a supervisor.
 */
export function supervisorStopRequested(): Promise<string> {
  return new Promise((resolve) => {
    if (!cluster.isWorker || !process.send) return;
    process.on('message', (message: unknown) => {
      if (message === SHUTDOWN_MESSAGE) resolve('supervisor');
    });
    process.once('disconnect', () => resolve('supervisor gone'));
  });
}
