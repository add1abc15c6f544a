/** Sends a welcome e-mail (to a log file standing in for a mail server) for every new user. */
import { appendFile, mkdir } from 'node:fs/promises';
import { dirname } from 'node:path';
import { defineConsumer } from 'pgq-bridge';
import { USERS_CHANNEL, outboxPath, type User } from '../shared.js';

export default defineConsumer({
  id: 'demo-welcome-email',
  channels: [USERS_CHANNEL],
  startFrom: 'beginning',
  async handle(n) {
    if (!n.isInsert()) return { skipped: n.change?.action };
    const user = n.change?.new as unknown as User;
    const mail = {
      to: user.email,
      subject: `Welcome, ${user.name}!`,
      notificationId: n.id,
      causedBy: n.context,
    };
    await mkdir(dirname(outboxPath()), { recursive: true });
    await appendFile(outboxPath(), `${JSON.stringify(mail)}\n`);
    console.log(`[welcome-email] sent "${mail.subject}" to ${user.email}`);
    return mail;
  },
});
