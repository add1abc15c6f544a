import type { Job } from 'bullmq';
import type { NotificationJobData } from './notification.js';

/** How often a long-running pack reports its progress (percent of its notifications done). */
const PROGRESS_EVERY_MS = 500;

/**
 * What a pack's notifications became, for the pack job's return value and progress (what Bull
 * Board shows of a pack): `outcomes` maps each notification id to a line such as `completed`,
 * `skipped: already completed per the ledger` or `failed (attempt 1: ...); retried as job n42`.
 */
export class PackReport {
  private readonly outcomes = new Map<string, string>();
  private timer: NodeJS.Timeout | undefined;
  private reported = -1;

  constructor(
    private readonly job: Job,
    private readonly entries: readonly NotificationJobData[],
  ) {}

  set(id: string, outcome: string): void {
    this.outcomes.set(id, outcome);
  }

  /** Starts reporting progress while the pack runs longer than {@link PROGRESS_EVERY_MS}. */
  watch(): void {
    this.timer = setInterval(() => this.progress(), PROGRESS_EVERY_MS);
    this.timer.unref();
  }

  /** Stops the reports; a pack that reported any ends with its final figure. */
  unwatch(): void {
    clearInterval(this.timer);
    if (this.reported >= 0) this.progress();
  }

  private progress(): void {
    const percent = Math.floor((this.outcomes.size / Math.max(1, this.entries.length)) * 100);
    if (percent === this.reported) return;
    this.reported = percent;
    this.job.updateProgress(percent).catch(() => undefined);
  }

  /** The pack job's return value. */
  summary(): { notifications: number; completed: number; outcomes: Record<string, string> } {
    let completed = 0;
    const outcomes: Record<string, string> = {};
    for (const e of this.entries) {
      const outcome = this.outcomes.get(e.id) ?? 'unknown';
      if (outcome === 'completed') completed++;
      outcomes[e.id] = outcome;
    }
    return { notifications: this.entries.length, completed, outcomes };
  }
}
