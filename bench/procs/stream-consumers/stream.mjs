/**
 * The live-stream bench's consumer, run by the real CLI: `pgq-bridge work --worker
 * --consumers-dir bench/procs/stream-consumers` (bench/stream.ts), so the memory and latency
 * measured are those of the command users deploy. Plain JavaScript: no TypeScript loader in the
 * measured process.
 *
 * It records when each handler started (wall time, comparable with the writer's commit times) and
 * answers the bench over IPC like procs/work.ts: `{ type: 'progress' }` → `{ type: 'progress',
 * handled }`, `{ type: 'collect' }` → `{ type: 'collected', ids, starts, added }` (added: the job's timestamp, when the listener
 * created it; ms). It sends
 * `{ type: 'loaded' }` once `work` has imported it.
 */
const wallMs = () => performance.timeOrigin + performance.now();

let handled = 0;
let ids = [];
let starts = [];
let added = [];

process.on('message', (message) => {
  if (message?.type === 'progress') process.send?.({ type: 'progress', handled });
  else if (message?.type === 'collect') {
    process.send?.({ type: 'collected', ids, starts, added });
    ids = [];
    starts = [];
    added = [];
  }
});
process.send?.({ type: 'loaded' });

export default {
  id: 'stream',
  channels: ['stream'],
  concurrency: 50,
  handle(n, job) {
    handled++;
    ids.push(n.id);
    starts.push(wallMs());
    added.push(job.timestamp);
  },
};
