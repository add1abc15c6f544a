/**
 * Rolling deploys of the `rollout` consumer (consumers.ts), one step per `rolling-deploy` fault,
 * alternating:
 *
 * - deploy: a new version vN (N = 2, 3, ...) that lists `users` besides `orders` starts on its own
 *   consumers dir beside the old `work` processes; one old process restarts on the old code (its
 *   registration must not remove the `users` subscription: SPEC "Consumers"); then the old ones
 *   are replaced by new ones, one at a time (SIGTERM, graceful), while old and new overlap.
 * - remove and roll back: `pgq-bridge consumers remove rollout --channels users`, then the
 *   processes go back to v1 (registered before the removal: it must not subscribe `users` again),
 *   one at a time. The next deploy's version is first registered after the removal: it subscribes
 *   `users` again, from a new boundary.
 *
 * The verifier follows the database: what is owed is what the subscription rows say at the end.
 */
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { runCli } from '../support/cli.js';
import {
  consumersFile,
  FIRST_VERSION,
  ROLLOUT,
  ROLLOUT_ADDED,
  type CodeVersion,
} from './consumers.js';
import type { BridgeProcess, ProcessSet } from './processes.js';
import type { Stack } from './stack.js';

/** Writes the consumers dir of `version` under the soak's dir; returns its path. */
export function writeVersion(stack: Stack, version: CodeVersion): string {
  const dir = join(stack.dir, `consumers-${version.code}`);
  mkdirSync(dir, { recursive: true });
  writeFileSync(join(dir, 'soak.mjs'), consumersFile(stack.soakSchema, version));
  return dir;
}

/** The state of the deploys: which version the `work` processes run. */
export class RollingDeploys {
  private n = 1;
  private readonly firstDir: string;
  /** Steps done, for the report. */
  readonly steps: string[] = [];

  constructor(
    private readonly stack: Stack,
    private readonly processes: ProcessSet,
  ) {
    this.firstDir = processes.consumersDir;
  }

  /** Whether the current version lists the added channel. */
  private get added(): boolean {
    return this.processes.consumersDir !== this.firstDir;
  }

  /** Runs the next step; resolves with what it did. */
  async step(): Promise<string> {
    const detail = this.added ? await this.removeAndRollBack() : await this.deploy();
    this.steps.push(detail);
    return detail;
  }

  private async deploy(): Promise<string> {
    this.n++;
    const version: CodeVersion = {
      code: `v${this.n}`,
      rolloutChannels: [...FIRST_VERSION.rolloutChannels, ROLLOUT_ADDED],
      rolloutAttempts: FIRST_VERSION.rolloutAttempts + this.n,
    };
    const newDir = writeVersion(this.stack, version);
    const olds = this.processes.running('work');
    const oldDir = this.processes.consumersDir;
    const done: string[] = [];
    const beside = await this.processes.start('work', newDir);
    done.push(`${version.code} pid ${beside.pid} started beside ${olds.length} old`);
    // An old replica restarts mid-deploy: it registers its (older) definition again.
    if (olds.length > 0) {
      const restarted = await this.restart(olds[0], oldDir);
      done.push(`old pid ${olds[0].pid} restarted on the old code as ${restarted.pid}`);
      olds[0] = restarted;
    }
    done.push(...(await this.replace(olds, newDir)));
    this.processes.consumersDir = newDir;
    return `deploy ${version.code} (${version.rolloutChannels.join(',')}): ${done.join('; ')}`;
  }

  private async removeAndRollBack(): Promise<string> {
    const removed = await runCli(['consumers', 'remove', ROLLOUT, '--channels', ROLLOUT_ADDED], {
      env: this.stack.directEnv,
      timeoutMs: 60_000,
    });
    const done = [
      `consumers remove ${ROLLOUT} --channels ${ROLLOUT_ADDED}: exit ${removed.code}` +
        (removed.code === 0 ? '' : ` (${removed.stderr.trim().slice(-200)})`),
    ];
    const olds = this.processes.running('work');
    const beside = await this.processes.start('work', this.firstDir);
    done.push(`v1 pid ${beside.pid} started beside`);
    done.push(...(await this.replace(olds, this.firstDir)));
    this.processes.consumersDir = this.firstDir;
    if (removed.code !== 0) throw new Error(done.join('; '));
    return `roll back to v1: ${done.join('; ')}`;
  }

  private async restart(proc: BridgeProcess, dir: string): Promise<BridgeProcess> {
    await this.processes.stop(proc);
    return this.processes.start('work', dir);
  }

  /**
   * Replaces `olds` by processes on `dir`, one at a time, after one new process was started beside
   * them: the last old one is stopped without a replacement, so the count stays what it was.
   */
  private async replace(olds: BridgeProcess[], dir: string): Promise<string[]> {
    const done: string[] = [];
    for (let i = 0; i < olds.length; i++) {
      await this.processes.stop(olds[i]);
      if (i < olds.length - 1) {
        const fresh = await this.processes.start('work', dir);
        done.push(`old pid ${olds[i].pid} stopped, new pid ${fresh.pid}`);
      } else {
        done.push(`old pid ${olds[i].pid} stopped`);
      }
    }
    return done;
  }
}
