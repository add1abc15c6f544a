/**
 * Runs the built CLI (`node bin/pgq-bridge.js ...`) the way a user would.
 *
 * `runCli` runs a command to completion; `startCli` starts a long-running one (listen, work,
 * board, start) and returns a handle. Every handle still alive is killed (whole process group,
 * SIGKILL) by `killAll()`, which test/setup/per-file.ts runs after each test file, and on exit.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { fileURLToPath } from 'node:url';

export const REPO_ROOT = fileURLToPath(new URL('../../', import.meta.url));
export const CLI_BIN = fileURLToPath(new URL('../../bin/pgq-bridge.js', import.meta.url));

export interface RunOptions {
  /** Environment of the child; default `process.env`. Usually `createTestEnv().env`. */
  env?: NodeJS.ProcessEnv;
  /** Written to the child's stdin, which is then closed. */
  input?: string;
  /** Kill the child (SIGKILL) and reject after this long. Default 30 000 ms. */
  timeoutMs?: number;
  /** Working directory; default the repo root. */
  cwd?: string;
}

export interface RunResult {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
}

/** One output line; `json` is set when the line is a JSON object (pino). */
export interface OutputLine {
  stream: 'stdout' | 'stderr';
  text: string;
  json?: Record<string, unknown>;
}

export type OutputMatcher = RegExp | ((line: OutputLine) => boolean);

export interface CliHandle {
  proc: ChildProcess;
  pid: number;
  stdout(): string;
  stderr(): string;
  /** Every complete output line so far, stdout and stderr interleaved in arrival order. */
  lines(): OutputLine[];
  /** The JSON (pino) lines so far. */
  logs(): Array<Record<string, unknown>>;
  /**
   * Resolves when an output line (from line `fromLine` on, default 0 = from the start) matches:
   * a RegExp is tested against the line's text; a function receives the line. Rejects on
   * timeout (default 15 000 ms) or if the process exits first, quoting the output.
   */
  waitForOutput(matcher: OutputMatcher, timeoutMs?: number, fromLine?: number): Promise<OutputLine>;
  /** Sends a signal to the CLI process itself (default SIGTERM). */
  kill(signal?: NodeJS.Signals): boolean;
  /** Sends a signal to the CLI's whole process group (its worker children too). */
  killGroup(signal?: NodeJS.Signals): boolean;
  /** Resolves when the process exits; rejects after `timeoutMs` (default 30 000 ms). */
  waitForExit(timeoutMs?: number): Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  readonly exited: boolean;
}

function parseJson(text: string): Record<string, unknown> | undefined {
  if (!text.startsWith('{')) return undefined;
  try {
    const value: unknown = JSON.parse(text);
    return value !== null && typeof value === 'object' && !Array.isArray(value)
      ? (value as Record<string, unknown>)
      : undefined;
  } catch {
    return undefined;
  }
}

function tail(text: string, max = 4000): string {
  return text.length > max ? '...' + text.slice(-max) : text;
}

/** Runs `node <nodeArgs...>` to completion. */
export function runNode(nodeArgs: string[], options: RunOptions = {}): Promise<RunResult> {
  const timeoutMs = options.timeoutMs ?? 30_000;
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, nodeArgs, {
      cwd: options.cwd ?? REPO_ROOT,
      env: options.env ?? process.env,
      stdio: ['pipe', 'pipe', 'pipe'],
    });
    running.add(child);
    let stdout = '';
    let stderr = '';
    child.stdout.setEncoding('utf8').on('data', (d: string) => (stdout += d));
    child.stderr.setEncoding('utf8').on('data', (d: string) => (stderr += d));
    child.stdin.on('error', () => {}); // EPIPE if the child exits before reading
    child.stdin.end(options.input ?? '');
    const timer = setTimeout(() => {
      child.kill('SIGKILL');
      reject(
        new Error(
          `node ${nodeArgs.join(' ')} did not exit within ${timeoutMs} ms\n` +
            `stdout:\n${tail(stdout)}\nstderr:\n${tail(stderr)}`,
        ),
      );
    }, timeoutMs);
    child.once('error', (error) => {
      clearTimeout(timer);
      running.delete(child);
      reject(error);
    });
    child.once('close', (code, signal) => {
      clearTimeout(timer);
      running.delete(child);
      resolve({ code, signal, stdout, stderr });
    });
  });
}

/** Runs `node bin/pgq-bridge.js <args...>` to completion (cwd: repo root). */
export function runCli(args: string[], options: RunOptions = {}): Promise<RunResult> {
  return runNode([CLI_BIN, ...args], options);
}

/** Children of runNode still running (killed by killAll). */
const running = new Set<ChildProcess>();
/** Handles of startNode still alive. */
const handles = new Set<CliHandle>();

/** Starts `node <nodeArgs...>` in its own process group and returns a handle. */
export function startNode(
  nodeArgs: string[],
  options: Omit<RunOptions, 'timeoutMs'> = {},
): CliHandle {
  const proc = spawn(process.execPath, nodeArgs, {
    cwd: options.cwd ?? REPO_ROOT,
    env: options.env ?? process.env,
    stdio: ['pipe', 'pipe', 'pipe'],
    // Own process group, so killGroup()/killAll() also reach worker processes it forks.
    detached: true,
  });
  if (proc.pid === undefined) throw new Error(`could not start node ${nodeArgs.join(' ')}`);
  const pid = proc.pid;

  let stdout = '';
  let stderr = '';
  const lines: OutputLine[] = [];
  const partial = { stdout: '', stderr: '' };
  const listeners = new Set<() => void>();
  let exit: { code: number | null; signal: NodeJS.Signals | null } | undefined;
  const notify = () => {
    for (const l of [...listeners]) l();
  };

  const onData = (stream: 'stdout' | 'stderr') => (chunk: string) => {
    if (stream === 'stdout') stdout += chunk;
    else stderr += chunk;
    const parts = (partial[stream] + chunk).split('\n');
    partial[stream] = parts.pop() ?? '';
    for (const raw of parts) {
      const text = raw.replace(/\r$/, '');
      if (text === '') continue;
      lines.push({ stream, text, json: parseJson(text) });
    }
    notify();
  };
  proc.stdout!.setEncoding('utf8').on('data', onData('stdout'));
  proc.stderr!.setEncoding('utf8').on('data', onData('stderr'));
  proc.stdin!.on('error', () => {});
  if (options.input !== undefined) proc.stdin!.end(options.input);

  const exitPromise = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>(
    (resolve) => {
      proc.once('close', (code, signal) => {
        // Flush a last line without a trailing newline.
        for (const stream of ['stdout', 'stderr'] as const) {
          if (partial[stream] !== '') {
            lines.push({ stream, text: partial[stream], json: parseJson(partial[stream]) });
            partial[stream] = '';
          }
        }
        exit = { code, signal };
        handles.delete(handle);
        notify();
        resolve(exit);
      });
    },
  );

  const describe = () =>
    `node ${nodeArgs.join(' ')} (pid ${pid})\nstdout:\n${tail(stdout)}\nstderr:\n${tail(stderr)}`;

  const signalGroup = (signal: NodeJS.Signals): boolean => {
    try {
      process.kill(-pid, signal);
      return true;
    } catch {
      return false;
    }
  };

  const handle: CliHandle = {
    proc,
    pid,
    stdout: () => stdout,
    stderr: () => stderr,
    lines: () => [...lines],
    logs: () => lines.flatMap((l) => (l.json ? [l.json] : [])),
    get exited() {
      return exit !== undefined;
    },
    waitForOutput(matcher, timeoutMs = 15_000, fromLine = 0) {
      const test = matcher instanceof RegExp ? (l: OutputLine) => matcher.test(l.text) : matcher;
      return new Promise((resolve, reject) => {
        let checked = fromLine;
        const check = () => {
          for (; checked < lines.length; checked++) {
            if (test(lines[checked])) {
              done();
              resolve(lines[checked]);
              return;
            }
          }
          if (exit !== undefined) {
            done();
            reject(
              new Error(
                `process exited (${exit.signal ?? `code ${exit.code}`}) before output matched ${String(
                  matcher,
                )}: ${describe()}`,
              ),
            );
          }
        };
        const timer = setTimeout(() => {
          done();
          reject(
            new Error(`no output matched ${String(matcher)} within ${timeoutMs} ms: ${describe()}`),
          );
        }, timeoutMs);
        const done = () => {
          clearTimeout(timer);
          listeners.delete(check);
        };
        listeners.add(check);
        check();
      });
    },
    kill(signal = 'SIGTERM') {
      if (exit !== undefined) return false;
      return proc.kill(signal);
    },
    killGroup(signal = 'SIGTERM') {
      return signalGroup(signal);
    },
    waitForExit(timeoutMs = 30_000) {
      if (exit !== undefined) return Promise.resolve(exit);
      return new Promise((resolve, reject) => {
        const timer = setTimeout(
          () => reject(new Error(`process did not exit within ${timeoutMs} ms: ${describe()}`)),
          timeoutMs,
        );
        void exitPromise.then((result) => {
          clearTimeout(timer);
          resolve(result);
        });
      });
    },
  };
  handles.add(handle);
  return handle;
}

/** Starts `node bin/pgq-bridge.js <args...>` (listen, work, board, start, ...). */
export function startCli(args: string[], options: Omit<RunOptions, 'timeoutMs'> = {}): CliHandle {
  return startNode([CLI_BIN, ...args], options);
}

/**
 * SIGKILLs every process started here that is still running (process groups of startCli
 * handles included) and waits for them to exit.
 */
export async function killAll(): Promise<void> {
  const waits: Array<Promise<unknown>> = [];
  for (const handle of [...handles]) {
    handle.killGroup('SIGKILL');
    handle.kill('SIGKILL');
    waits.push(handle.waitForExit(5_000).catch(() => {}));
  }
  for (const child of [...running]) {
    child.kill('SIGKILL');
  }
  await Promise.all(waits);
}

process.once('exit', () => {
  for (const handle of handles) {
    try {
      process.kill(-handle.pid, 'SIGKILL');
    } catch {
      // already gone
    }
  }
  for (const child of running) child.kill('SIGKILL');
});
