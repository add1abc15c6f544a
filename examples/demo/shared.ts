/**
 * What the demo app and its consumers share: the users table, its channel, where the welcome
 * e-mails go and how the user cache is keyed.
 */
import { tmpdir } from 'node:os';
import { join } from 'node:path';

/** A row of the demo's users table (as it arrives in `n.change.new` / `n.change.old`). */
export interface User {
  id: number;
  email: string;
  name: string;
}

/** Channel of the users table's trigger (prefixed so it cannot collide with a real app's). */
export const USERS_CHANNEL = 'demo.users';

/** Schema of the demo's users table. */
export function demoSchema(): string {
  return process.env.DEMO_SCHEMA ?? 'pgq_demo';
}

/** The "mail server": one JSON line per welcome e-mail. */
export function outboxPath(): string {
  return process.env.DEMO_OUTBOX ?? join(tmpdir(), 'pgq-bridge-demo', 'outbox.log');
}

/** Redis key of a cached user (under the BullMQ prefix, so one prefix holds all demo keys). */
export function cacheKey(userId: unknown): string {
  return `${process.env.PGQ_PREFIX ?? 'pgq'}:demo-cache:user:${String(userId)}`;
}
