import { describe, expect, it } from 'vitest';
import { createServer } from 'node:net';
import { killAll, runNode, startNode } from '../../support/cli.js';
import { freePort, isPortOpen } from '../../support/servers.js';

describe('runNode', () => {
  it('captures exit code, stdout, stderr and feeds stdin', async () => {
    const result = await runNode(
      [
        '-e',
        `let s='';process.stdin.on('data',d=>s+=d).on('end',()=>{console.log('out:'+s);console.error('err');process.exit(3)})`,
      ],
      { input: 'hello' },
    );
    expect(result).toMatchObject({ code: 3, stdout: 'out:hello\n', stderr: 'err\n' });
  });

  it('passes the environment', async () => {
    const result = await runNode(['-e', 'console.log(process.env.PGQ_X)'], {
      env: { ...process.env, PGQ_X: 'y' },
    });
    expect(result.stdout).toBe('y\n');
  });

  it('rejects when the process outlives timeoutMs', async () => {
    await expect(runNode(['-e', 'setInterval(()=>{},1000)'], { timeoutMs: 300 })).rejects.toThrow(
      /did not exit within 300 ms/,
    );
  });
});

describe('startNode', () => {
  it('waits for JSON output lines, then stops on a signal', async () => {
    const handle = startNode([
      '-e',
      // The handler first: a SIGTERM that arrives right after 'ready' must find it installed.
      `process.on('SIGTERM',()=>{console.log(JSON.stringify({msg:'bye'}));process.exit(0)});
       console.log(JSON.stringify({msg:'ready',n:1}));
       setInterval(()=>{},1000)`,
    ]);
    const line = await handle.waitForOutput((l) => l.json?.msg === 'ready', 5000);
    expect(line.json).toEqual({ msg: 'ready', n: 1 });
    await handle.waitForOutput(/"ready"/, 5000);
    handle.kill('SIGTERM');
    expect(await handle.waitForExit(5000)).toEqual({ code: 0, signal: null });
    expect(handle.logs().map((l) => l.msg)).toEqual(['ready', 'bye']);
    expect(handle.exited).toBe(true);
  });

  it('rejects waitForOutput when the process exits first, quoting its output', async () => {
    const handle = startNode(['-e', `console.error('fatal: nope');process.exit(1)`]);
    await expect(handle.waitForOutput(/never/, 5000)).rejects.toThrow(
      /exited \(code 1\)[\s\S]*fatal: nope/,
    );
  });

  it('rejects waitForOutput on timeout', async () => {
    const handle = startNode(['-e', 'setInterval(()=>{},1000)']);
    await expect(handle.waitForOutput(/never/, 200)).rejects.toThrow(/within 200 ms/);
    handle.kill('SIGKILL');
    expect((await handle.waitForExit(5000)).signal).toBe('SIGKILL');
  });

  it('killAll kills the whole process group, grandchildren included', async () => {
    const port = await freePort();
    // The child forks a grandchild that holds a listening port, like `work --processes`.
    const handle = startNode([
      '-e',
      `const {spawn}=require('node:child_process');
       spawn(process.execPath,['-e',"require('node:net').createServer().listen(${port},'127.0.0.1',()=>console.log('grandchild up'))"],{stdio:'inherit'});
       setInterval(()=>{},1000)`,
    ]);
    await handle.waitForOutput(/grandchild up/, 10_000);
    expect(await isPortOpen(port)).toBe(true);
    await killAll();
    expect(handle.exited).toBe(true);
    // The grandchild died too: the port can be bound again.
    await expect.poll(() => isPortOpen(port), { timeout: 5000 }).toBe(false);
    await new Promise<void>((resolve, reject) => {
      const server = createServer().once('error', reject);
      server.listen(port, '127.0.0.1', () => server.close(() => resolve()));
    });
  });
});
