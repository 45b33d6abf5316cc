// The comprehensive test suite of the seed, as a block: it exercises every capability
// and operation and prints one line per operation: PASS, FAIL, or SKIP when the
// tenant's profile does not allow it (PERMISSION_DENIED). Its result counts the lines.
//
//   python manage.py runblock examples/test-orchestrator.js --tenant demo-advanced

const results = { passed: 0, failed: 0, skipped: 0 };
const passed = new Set();

// Runs one check. `needs` names a check that must have passed first (a read needs the
// write that made its file): without it, this one is skipped too.
async function check(name, fn, needs) {
  if (needs && !passed.has(needs)) {
    results.skipped++;
    console.log(`SKIP ${name}: needs ${needs}`);
    return;
  }
  try {
    const detail = await fn();
    results.passed++;
    passed.add(name);
    console.log(`PASS ${name}${detail ? ` (${detail})` : ''}`);
  } catch (error) {
    if (error?.code === 'PERMISSION_DENIED') {
      results.skipped++;
      console.log(`SKIP ${name}: ${error.message}`);
    } else {
      results.failed++;
      console.log(`FAIL ${name}: ${error?.code ?? error?.name} ${error?.message}`);
    }
  }
}

function expect(condition, message) {
  if (!condition) throw new Error(message);
}

const dir = `orchestrator-test/${symposium.utils.generateId()}`;

// Files
await check('files.writeFile', async () => {
  const r = await symposium.writeFile(`${dir}/hello.txt`, 'Hello World');
  expect(r.success, 'not successful');
});
await check('files.readFile', async () => {
  const r = await symposium.readFile(`${dir}/hello.txt`);
  expect(r.data === 'Hello World', `read back ${JSON.stringify(r.data)}`);
}, 'files.writeFile');
await check('files.readFile binary', async () => {
  await symposium.writeFile(`${dir}/bytes.dat`, new Uint8Array([0, 1, 2, 255]));
  const r = await symposium.readFile(`${dir}/bytes.dat`, { encoding: 'binary' });
  expect(r.data instanceof Uint8Array && r.data[3] === 255, 'bytes differ');
}, 'files.writeFile');
await check('files.listDirectory', async () => {
  const r = await symposium.listDirectory(dir);
  expect(r.data.some((e) => e.name === 'hello.txt'), 'hello.txt not listed');
  return `${r.data.length} entries`;
}, 'files.writeFile');
await check('files.getFileInfo', async () => {
  const info = await symposium.getFileInfo(`${dir}/hello.txt`);
  expect(info.size === 11, `size ${info.size}`);
  return `${info.size} bytes`;
}, 'files.writeFile');
await check('files.fileExists', async () => {
  const yes = await symposium.fileExists(`${dir}/hello.txt`);
  const no = await symposium.fileExists(`${dir}/missing.txt`);
  expect(yes.data === true && no.data === false, 'wrong answers');
}, 'files.writeFile');
await check('files.deleteFile', async () => {
  await symposium.deleteFile(`${dir}/hello.txt`);
  const r = await symposium.fileExists(`${dir}/hello.txt`);
  expect(r.data === false, 'still there');
}, 'files.writeFile');
await check('files.readFile outside storage is refused', async () => {
  try {
    await symposium.readFile('../../etc/passwd');
  } catch (error) {
    expect(error.code === 'INVALID_ARGUMENT', `got ${error.code}`);
    return 'INVALID_ARGUMENT';
  }
  throw new Error('traversal was not refused');
});

// Network: a refused address proves the guard without needing the internet.
await check('network.fetch private address refused', async () => {
  try {
    await symposium.network.fetch('http://169.254.169.254/latest/meta-data/');
  } catch (error) {
    if (error.code === 'PERMISSION_DENIED' && /profile/.test(error.message)) throw error;
    expect(['PERMISSION_DENIED', 'INVALID_ARGUMENT'].includes(error.code), `got ${error.code}`);
    return error.code;
  }
  throw new Error('metadata address was reachable');
});

// Canvas
await check('canvas.createCanvas', async () => {
  const c = await symposium.canvas.createCanvas(200, 100);
  expect(typeof c.canvasId === 'string', 'no canvasId');
  globalThis.testCanvas = c.canvasId;
});
await check('canvas.draw', async () => {
  await symposium.canvas.draw(globalThis.testCanvas, [
    { type: 'fillRect', x: 10, y: 10, width: 50, height: 50, style: '#ff0000' },
    { type: 'beginPath' },
    { type: 'arc', x: 150, y: 50, radius: 30, startAngle: 0, endAngle: Math.PI * 2 },
    { type: 'stroke', style: '#00ff00' },
  ]);
}, 'canvas.createCanvas');
await check('canvas.exportImage', async () => {
  const img = await symposium.canvas.exportImage(globalThis.testCanvas, 'png');
  expect(img.data[1] === 0x50 && img.data[2] === 0x4e, 'not a PNG');
  return `${img.data.length} bytes of PNG`;
}, 'canvas.draw');

// Images: the canvas's picture, written, described, transformed, drawn back
await check('image.info', async () => {
  const img = await symposium.canvas.exportImage(globalThis.testCanvas, 'png');
  await symposium.writeFile(`${dir}/chart.png`, img.data);
  const info = await symposium.image.info(`${dir}/chart.png`);
  expect(info.data.width === 200 && info.data.height === 100 && info.data.format === 'png', `got ${JSON.stringify(info.data)}`);
}, 'canvas.draw');
await check('image.transform', async () => {
  const r = await symposium.image.transform(`${dir}/chart.png`,
    [{ type: 'crop', x: 0, y: 0, width: 100, height: 100 }, { type: 'resize', width: 50 }, 'grayscale'],
    { output: `${dir}/thumb.png` });
  expect(r.data.width === 50 && r.data.height === 50 && r.data.mode === 'LA', `got ${JSON.stringify(r.data)}`);
  return `${r.data.size} bytes`;
}, 'image.info');
await check('canvas.drawImage', async () => {
  const c = await symposium.canvas.createCanvas(60, 60);
  await symposium.canvas.drawImage(c.canvasId, `${dir}/thumb.png`, 5, 5, 50, 50);
  const img = await symposium.canvas.exportImage(c.canvasId, 'png');
  expect(img.data.length > 0, 'empty export');
}, 'image.transform');

// Database
await check('database.query', async () => {
  await symposium.database.query('CREATE TABLE IF NOT EXISTS orchestrator_test (note TEXT)');
  await symposium.database.query('INSERT INTO orchestrator_test (note) VALUES (?)', ["it's; DROP TABLE x; --"]);
  const r = await symposium.database.query('SELECT note FROM orchestrator_test WHERE note = ?', ["it's; DROP TABLE x; --"]);
  expect(r.data.rows.length >= 1, 'row not found');
});
await check('database.transaction', async () => {
  const r = await symposium.database.transaction([
    { query: 'INSERT INTO orchestrator_test (note) VALUES (?)', params: ['a'] },
    { query: 'INSERT INTO orchestrator_test (note) VALUES (?)', params: ['b'] },
  ]);
  expect(r.success, 'not successful');
}, 'database.query');

// Process
await check('process.execute', async () => {
  const r = await symposium.process.execute('echo', ['$HOME', 'stays literal']);
  expect(r.exitCode === 0 && r.stdout.trim() === '$HOME stays literal', `got ${JSON.stringify(r.stdout)}`);
});

// Key-value state between runs
const kvKey = `orchestrator-test:${symposium.utils.generateId()}`;
await check('kv.set', async () => {
  const r = await symposium.kv.set(kvKey, { runs: 1, tags: ['a', 'b'] }, { ttl: 600 });
  expect(r.data.key === kvKey && r.data.expires, 'no expiry');
});
await check('kv.get', async () => {
  const r = await symposium.kv.get(kvKey);
  expect(r.found && r.data.runs === 1 && r.data.tags[1] === 'b', `read back ${JSON.stringify(r.data)}`);
}, 'kv.set');
await check('kv.list', async () => {
  const r = await symposium.kv.list({ prefix: kvKey, limit: 10 });
  expect(r.data.keys.length === 1 && r.data.keys[0].key === kvKey, `listed ${JSON.stringify(r.data.keys)}`);
}, 'kv.set');
await check('kv.delete', async () => {
  await symposium.kv.delete(kvKey);
  const r = await symposium.kv.get(kvKey);
  expect(!r.found, 'still there');
}, 'kv.set');

// Email (from the tenant's configured sender; the embedded platform keeps it in its outbox)
await check('email.send', async () => {
  const r = await symposium.email.send({
    to: 'orchestrator@example.org',
    subject: 'Test orchestrator',
    text: 'Sent by the test orchestrator.',
    attachments: [{ filename: 'result.json', content: JSON.stringify(results) }],
  });
  expect(r.data.accepted.length === 1 && /^<.+@.+>$/.test(r.data.messageId), `got ${JSON.stringify(r.data)}`);
  return r.data.messageId;
});
await check('email.send header injection refused', async () => {
  try {
    await symposium.email.send({ to: 'orchestrator@example.org', subject: 'Hi\r\nBcc: victim@example.org', text: 'x' });
  } catch (error) {
    if (error.code === 'PERMISSION_DENIED') throw error;
    expect(error.code === 'INVALID_ARGUMENT', `got ${error.code}`);
    return error.code;
  }
  throw new Error('the injected header was sent');
});

// Realtime: publishing with nobody listening succeeds
await check('realtime.publish', async () => {
  const r = await symposium.realtime.publish('orchestrator-test', { passed: results.passed });
  expect(r.success && (r.data.delivered === undefined || r.data.delivered >= 0), `got ${JSON.stringify(r.data)}`);
  return r.data.delivered === undefined ? 'sent' : `${r.data.delivered} listening`;
});

// Utilities (local, synchronous)
await check('utils', () => {
  expect(/^temp\/tmp_\d+_[a-z0-9]+\.json$/.test(symposium.utils.generateTempPath('.json')), 'temp path');
  expect(Math.abs(symposium.utils.getTimestamp() - Date.now()) < 1000, 'timestamp');
  expect(symposium.utils.generateId() !== symposium.utils.generateId(), 'ids repeat');
});

console.log(`${results.passed} passed, ${results.failed} failed, ${results.skipped} skipped`);
export default () => results;
