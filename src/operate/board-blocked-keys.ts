import type { Request, Response } from 'express';
import { OrderingSql } from '../db/ordering.js';
import type { Queryable } from '../db/store.js';
import { redactSecrets } from '../log.js';
import { errorMessage } from '../util.js';
import { blockedKeysStatus } from './blocked-keys.js';

/** Blocked heads listed on the page (the JSON has the counts of all). */
const PAGE_LIMIT = 200;

function escapeHtml(text: string): string {
  return text.replace(
    /[&<>"']/g,
    (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' })[c] ?? c,
  );
}

/** What the board's blocked-keys page and its JSON show. */
export async function blockedKeysReport(db: Queryable, schema: string) {
  const sql = new OrderingSql(schema);
  const [ordering, heads] = await Promise.all([
    sql.orderingOfConsumers(db),
    sql.blockedHeads(db, PAGE_LIMIT),
  ]);
  const consumers = [...ordering]
    .filter(([, o]) => o.mode === 'block')
    .map(([id, o]) => ({ id, ...blockedKeysStatus(o.blocked) }));
  return {
    consumers,
    heads: heads.map((h) => ({ ...h, failedAt: h.failedAt.toISOString() })),
  };
}

/**
 * `GET /blocked-keys` of the board (linked from its header): the keys of ordered consumers that
 * a dead letter blocks, oldest first, with the commands that release them. `?format=json` (or
 * `Accept: application/json`) gives the same as JSON.
 */
export function blockedKeysHandler(db: Queryable, schema: string) {
  return async (req: Request, res: Response): Promise<void> => {
    let report: Awaited<ReturnType<typeof blockedKeysReport>>;
    try {
      report = await blockedKeysReport(db, schema);
    } catch (error) {
      res
        .status(503)
        .type('text/plain')
        .send(`${redactSecrets(errorMessage(error))}\n`);
      return;
    }
    if (req.query.format === 'json' || req.accepts(['html', 'json']) === 'json') {
      res.json(report);
      return;
    }
    const summary = report.consumers
      .map((c) => `<li><b>${escapeHtml(c.id)}</b>: ${c.count} blocked key(s)</li>`)
      .join('');
    const rows = report.heads
      .map(
        (h) =>
          `<tr><td>${escapeHtml(h.consumerId)}</td><td><code>${escapeHtml(h.key)}</code></td>` +
          `<td>${escapeHtml(h.notificationId)}</td><td>${escapeHtml(h.failedAt)}</td>` +
          `<td>${escapeHtml((h.lastError ?? '').split('\n')[0].slice(0, 200))}</td>` +
          `<td><code>pgq-bridge reconcile --failed --consumers ${escapeHtml(h.consumerId)}</code><br>` +
          `<code>pgq-bridge consumers skip ${escapeHtml(h.consumerId)} ${escapeHtml(h.notificationId)}</code></td></tr>`,
      )
      .join('');
    res.type('html').send(`<!doctype html><html><head><meta charset="utf-8">
<title>pgq-bridge: blocked keys</title>
<style>body{font-family:sans-serif;margin:2em}td,th{border:1px solid #ccc;padding:4px 8px;text-align:left}table{border-collapse:collapse}</style>
</head><body><h1>Blocked keys</h1>
<p>Ordered consumers with <code>onDeadLetter: 'block'</code>: a dead letter holds the later notifications of its key until it is retried (<code>reconcile --failed</code>) or given up (<code>consumers skip</code>).</p>
<ul>${summary || '<li>no ordered consumer blocks on dead letters</li>'}</ul>
${rows ? `<table><tr><th>consumer</th><th>key</th><th>notification</th><th>failed at</th><th>error</th><th>release</th></tr>${rows}</table>` : '<p>No key is blocked.</p>'}
</body></html>`);
  };
}
