import type { Command } from 'commander';
import {
  listConsumers,
  removeConsumer,
  skipDelivery,
  type ConsumerListing,
} from '../operate/consumers.js';
import { commandContext, list } from './context.js';

function options(c: ConsumerListing): string {
  const o = c.jobOptions;
  const parts = [`attempts ${String(o.attempts ?? '-')}`];
  if (o.backoff !== undefined) parts.push(`backoff ${JSON.stringify(o.backoff)}`);
  if (c.batch) parts.push(`batch ${c.batch.size}/${c.batch.maxWaitMs}ms`);
  for (const key of ['concurrency', 'timeout'] as const) {
    if (c.settings[key] !== undefined && c.settings[key] !== null) {
      parts.push(`${key} ${String(c.settings[key])}`);
    }
  }
  if (c.settings.transactional === true) parts.push('transactional');
  return parts.join(', ');
}

function ordering(value: unknown): string {
  if (value === true) return 'ordered';
  if (value && typeof value === 'object') {
    return `ordered (onDeadLetter ${String((value as { onDeadLetter?: unknown }).onDeadLetter ?? 'block')})`;
  }
  return 'unordered';
}

/** The human listing of `consumers list`: one block per consumer. */
export function formatConsumers(consumers: ConsumerListing[]): string {
  if (consumers.length === 0) return 'no consumers registered (start `pgq-bridge work`)\n';
  const lines: string[] = [];
  for (const c of consumers) {
    const listed = new Set(c.definitionChannels ?? c.channels);
    const channels = c.channels.map((ch) =>
      listed.has(ch) ? ch : `${ch} (not in newest definition)`,
    );
    lines.push(`${c.id}${c.retiredAt ? `  RETIRED at ${c.retiredAt.toISOString()}` : ''}`);
    lines.push(`  channels:  ${channels.join(', ') || '(none)'}`);
    if (c.removedChannels.length > 0) lines.push(`  removed:   ${c.removedChannels.join(', ')}`);
    lines.push(`  options:   ${options(c)}; ${ordering(c.settings.ordered)}`);
    lines.push(
      `  last seen: ${c.lastSeenWorker ? `${c.lastSeenWorker} at ${c.lastSeenAt?.toISOString()}` : '-'}` +
        ` (${c.definitions} definition${c.definitions === 1 ? '' : 's'} registered)`,
    );
    const q = c.queue;
    lines.push(
      `  backlog:   ${c.unbridged} unbridged, ` +
        (q
          ? `${q.waiting + q.prioritized} waiting, ${q.active} active, ${q.delayed} delayed, ${q.failed} failed jobs`
          : 'queue figures unavailable (Redis did not answer)') +
        `, ${c.failed} dead letters in the ledger`,
    );
  }
  return lines.join('\n') + '\n';
}

export function registerConsumers(program: Command): void {
  const consumers = program
    .command('consumers')
    .description('inspect and retire consumers and subscriptions; give up a dead letter');

  consumers
    .command('list')
    .description('every consumer: channels, options, ordering, last worker seen, backlog')
    .option('--json', 'print JSON (one array)')
    .action(async (opts: { json?: boolean }, command: Command) => {
      const { config, log } = await commandContext(command);
      const listing = await listConsumers({ settings: config, logger: log });
      process.stdout.write(
        opts.json ? `${JSON.stringify(listing, null, 2)}\n` : formatConsumers(listing),
      );
    });

  consumers
    .command('remove')
    .description('unsubscribe channels (--channels), or retire the consumer')
    .argument('<id>', 'consumer id')
    .option('--channels <list>', 'unsubscribe only these channels (comma-separated)', list)
    .action(async (id: string, opts: { channels?: string[] }, command: Command) => {
      const { config, log } = await commandContext(command);
      const r = await removeConsumer({
        settings: config,
        logger: log,
        consumer: id,
        channels: opts.channels,
      });
      process.stdout.write(
        r.retired
          ? `retired consumer ${r.consumer} (unsubscribed ${r.removedChannels.join(', ') || 'nothing'})\n`
          : `unsubscribed consumer ${r.consumer} from ${r.removedChannels.join(', ')}; ` +
              `still subscribed to ${r.remainingChannels.join(', ') || '(nothing)'}\n`,
      );
    });

  consumers
    .command('skip')
    .description('give up one dead letter: recorded as skipped in the ledger, its job removed')
    .argument('<consumer>', 'consumer id')
    .argument('<notification-id>', 'notification id')
    .action(async (consumer: string, notificationId: string, _opts: unknown, command: Command) => {
      const { config, log } = await commandContext(command);
      const r = await skipDelivery({ settings: config, logger: log, consumer, notificationId });
      process.stdout.write(
        r.changed
          ? `skipped notification ${r.notificationId} for consumer ${r.consumer} (was ${
              r.previousStatus ?? 'retrying'
            }; job ${r.jobState === null ? 'already gone' : `${r.jobState}, removed`})\n`
          : `notification ${r.notificationId} was already skipped for consumer ${r.consumer}\n`,
      );
    });
}
