/** Posts every user change to a webhook (the demo starts a local HTTP sink for it). */
import { PermanentError, defineConsumer } from 'pgq-bridge';
import { USERS_CHANNEL } from '../shared.js';

export default defineConsumer({
  id: 'demo-webhook',
  channels: [USERS_CHANNEL],
  startFrom: 'beginning',
  attempts: 5,
  backoff: { type: 'exponential', delay: 500 },
  timeout: 10_000,
  async handle(n) {
    const url = process.env.DEMO_WEBHOOK_URL;
    if (!url) throw new PermanentError('DEMO_WEBHOOK_URL is not set');
    const change = n.change;
    if (!change) throw new PermanentError(`not a row change: ${JSON.stringify(n.payload)}`);
    const event = `user.${{ INSERT: 'created', UPDATE: 'updated', DELETE: 'deleted' }[change.action]}`;
    const response = await fetch(url, {
      method: 'POST',
      headers: {
        'content-type': 'application/json',
        // Delivery is at least once: the receiver deduplicates on this key.
        'idempotency-key': `pgq-${n.id}`,
      },
      body: JSON.stringify({
        event,
        userId: change.recordId,
        data: change.new ?? change.old,
        changed: n.changedColumns(),
        context: n.context,
      }),
    });
    // Any other status is retried with backoff by BullMQ.
    if (!response.ok) throw new Error(`webhook answered ${response.status}`);
    console.log(`[webhook] POST ${event} user ${String(change.recordId)} -> ${response.status}`);
    return { status: response.status };
  },
});
