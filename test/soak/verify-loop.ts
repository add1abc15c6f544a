/**
 * `reconcile --verify` in a loop during the whole load: the real CLI, through the proxies like the
 * bridge's own processes (so the chaos cuts and restarts hit it too), one run after another with a
 * short pause. A run that fails (Redis or Postgres away) is counted and the loop goes on; what the
 * runs re-enqueued is summed. Every job it re-adds is a replay (`isReplay`), so the verifier can
 * tell the duplicates it causes.
 */
import { runCli } from '../support/cli.js';

/** What the loop did. */
export interface VerifyLoopTotals {
  runs: number;
  /** Runs that exited 0. */
  ok: number;
  /** Runs that failed (exit code, or killed after the timeout), with a few of their causes. */
  failed: number;
  failures: string[];
  /** Sums of the successful runs' summaries (enqueued, bridged, alreadyQueued, ...). */
  sums: Record<string, number>;
}

/** A running loop. */
export interface VerifyLoop {
  readonly totals: VerifyLoopTotals;
  /** Stops after the run in flight. */
  stop(): Promise<void>;
}

/**
 * The summary `reconcile --json` printed: its last JSON line with a `scanned` count (log lines,
 * e.g. a warning about a lost connection, may come before it on stdout).
 */
export function reconcileSummary(stdout: string): Record<string, unknown> {
  const lines = stdout.split('\n').reverse();
  for (const line of lines) {
    if (!line.startsWith('{')) continue;
    try {
      const value = JSON.parse(line) as Record<string, unknown>;
      if (typeof value.scanned === 'number') return value;
    } catch {
      // Not a JSON line.
    }
  }
  throw new Error(`no reconcile summary in its output: ${stdout.slice(-300)}`);
}

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/** Starts the loop with the environment `env`, pausing `pauseMs` between runs. */
export function startVerifyLoop(env: NodeJS.ProcessEnv, pauseMs: number): VerifyLoop {
  const totals: VerifyLoopTotals = { runs: 0, ok: 0, failed: 0, failures: [], sums: {} };
  let stopping = false;
  const loop = async (): Promise<void> => {
    while (!stopping) {
      totals.runs++;
      try {
        const result = await runCli(['reconcile', '--verify', '--json'], {
          env,
          timeoutMs: 120_000,
        });
        if (result.code !== 0)
          throw new Error(`exit ${result.code}: ${result.stderr.trim().slice(-200)}`);
        const summary = reconcileSummary(result.stdout);
        totals.ok++;
        for (const [name, value] of Object.entries(summary)) {
          if (typeof value === 'number') totals.sums[name] = (totals.sums[name] ?? 0) + value;
        }
      } catch (error) {
        totals.failed++;
        if (totals.failures.length < 5) totals.failures.push((error as Error).message);
      }
      const until = Date.now() + pauseMs;
      while (!stopping && Date.now() < until) await sleep(100);
    }
  };
  const running = loop();
  return {
    totals,
    async stop() {
      stopping = true;
      await running;
    },
  };
}
