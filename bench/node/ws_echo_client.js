// WebSocket echo load for bench/ws_echo.py: N sockets to ws://127.0.0.1:PORT/ws opened first,
// then on each, until DURATION s have passed (or MAX messages in all), one SIZE-byte text message
// (masked, as a client's must be) and a wait for its echo. Node's `net` and RFC 6455 framing by
// hand: node 20 has no WebSocket client without a flag, and no npm package is needed.
// usage: node bench/node/ws_echo_client.js PORT SOCKETS DURATION SIZE MAX OPEN_LIMIT DRAIN_LIMIT
// It talks to its parent in lines: stdout {"event":"open",...}; stdin "go"; stdout
// {"event":"done",...} when the message phase ends; stdout {"event":"closed",...}, then it exits.
'use strict';
const net = require('net');
const crypto = require('crypto');
const readline = require('readline');

const [port, nSockets, duration, size, maxMessages, openLimit, drainLimit] =
  process.argv.slice(2).map(Number);
if (!(port > 0 && nSockets > 0 && duration > 0 && size >= 8 && size <= 125 && maxMessages > 0 &&
      openLimit > 0 && drainLimit > 0)) {
  console.error('usage: ws_echo_client.js PORT SOCKETS DURATION SIZE(8-125) MAX OPEN_LIMIT ' +
    'DRAIN_LIMIT');
  process.exit(2);
}
const GUID = '258EAFA5-E914-47DA-95CA-C5AB0DC85B11';
const CLOSE_LIMIT = 2000; // ms for the close handshake at the end
// Never outlive a parent that stopped talking: every phase is bounded, and so is the whole
const HARD_LIMIT = (openLimit + 60 + duration + drainLimit) * 1000 + CLOSE_LIMIT + 5000;
setTimeout(() => { emit({ event: 'error', error: 'hard time limit reached' }); process.exit(4); },
  HARD_LIMIT).unref();

function emit(obj) { process.stdout.write(JSON.stringify(obj) + '\n'); }

// Mask keys come from a pool filled by the CSPRNG in bulk (one call per 2,048 frames)
const pool = Buffer.allocUnsafe(8192);
let poolAt = pool.length;
function maskKey() {
  if (poolAt === pool.length) { crypto.randomFillSync(pool); poolAt = 0; }
  poolAt += 4;
  return pool.subarray(poolAt - 4, poolAt);
}

function clientFrame(opcode, payload) {
  const out = Buffer.allocUnsafe(6 + payload.length);
  out[0] = 0x80 | opcode;
  out[1] = 0x80 | payload.length; // < 126: SIZE is at most 125, a close payload 2
  const key = maskKey();
  key.copy(out, 2);
  for (let i = 0; i < payload.length; i++) out[6 + i] = payload[i] ^ key[i & 3];
  return out;
}

const reasons = {}; // why sockets failed or ended early: reason -> count
function count(reason) { reasons[reason] = (reasons[reason] || 0) + 1; }

const rtt = new Float32Array(maxMessages); // ms, one per echo
let messages = 0;
let bad = 0; // echoes that were not the message sent
let phase = 'open'; // open -> ready -> run -> drain -> close
let t0 = 0;
let tEnd = 0;
let tLast = 0;
const replicas = {}; // X-Replica of each 101 -> sockets
const conns = [];

class Conn {
  constructor(index) {
    this.index = index;
    this.state = 'connecting'; // connecting, open, failed, finished, ended (early), closed
    this.head = '';
    this.buf = null; // bytes of a frame not complete yet
    this.payload = Buffer.alloc(size, 'x');
    this.seq = 0;
    this.sentAt = 0;
    this.key = crypto.randomBytes(16).toString('base64');
    const s = this.socket = net.connect({ host: '127.0.0.1', port });
    s.setNoDelay(true);
    s.on('connect', () => s.write(`GET /ws HTTP/1.1\r\nHost: 127.0.0.1:${port}\r\n` +
      'Upgrade: websocket\r\nConnection: Upgrade\r\n' +
      `Sec-WebSocket-Key: ${this.key}\r\nSec-WebSocket-Version: 13\r\n\r\n`));
    s.on('data', (d) => this.onData(d));
    s.on('error', (e) => { this.error = e.code || e.message; });
    s.on('close', () => this.onClose());
  }

  fail(reason) {
    if (this.state !== 'connecting') return;
    this.state = 'failed';
    count('open: ' + reason);
    this.socket.destroy();
    opened();
  }

  onData(d) {
    if (this.state === 'connecting') {
      this.head += d.toString('latin1');
      const end = this.head.indexOf('\r\n\r\n');
      if (end < 0) {
        if (this.head.length > 16384) this.fail('answer head too long');
        return;
      }
      const lines = this.head.slice(0, end).split('\r\n');
      const status = lines[0].split(' ')[1];
      const headers = {};
      for (const line of lines.slice(1)) {
        const i = line.indexOf(':');
        headers[line.slice(0, i).trim().toLowerCase()] = line.slice(i + 1).trim();
      }
      if (status !== '101') return this.fail(`answer ${lines[0].slice(0, 60)}`);
      const accept = crypto.createHash('sha1').update(this.key + GUID).digest('base64');
      if (headers['sec-websocket-accept'] !== accept) {
        return this.fail('wrong Sec-WebSocket-Accept');
      }
      const replica = headers['x-replica'] || '?';
      replicas[replica] = (replicas[replica] || 0) + 1;
      this.state = 'open';
      const rest = Buffer.from(this.head.slice(end + 4), 'latin1');
      this.head = '';
      opened();
      if (rest.length) this.onFrames(rest);
      return;
    }
    this.onFrames(d);
  }

  onFrames(d) {
    let b = this.buf ? Buffer.concat([this.buf, d]) : d;
    this.buf = null;
    while (b.length >= 2) {
      const masked = b[1] & 0x80;
      let n = b[1] & 0x7f;
      let at = 2;
      if (n === 126) {
        if (b.length < 4) break;
        n = b.readUInt16BE(2); at = 4;
      } else if (n === 127) {
        if (b.length < 10) break;
        n = Number(b.readBigUInt64BE(2)); at = 10;
      }
      if (masked) { this.end('a masked frame from the server'); return; }
      if (b.length < at + n) break;
      this.onFrame(b[0] & 0x0f, b.subarray(at, at + n));
      b = b.subarray(at + n);
    }
    if (b.length) this.buf = Buffer.from(b); // a copy: d's memory is not ours to keep
  }

  onFrame(opcode, payload) {
    if (opcode === 0x9) { this.socket.write(clientFrame(0xa, payload)); return; } // ping -> pong
    if (opcode === 0xa) return;
    if (opcode === 0x8) {
      if (this.state === 'closing') {
        this.state = 'closed';
        closedOne();
        this.socket.end();
        return;
      }
      this.end(`close frame ${payload.length >= 2 ? payload.readUInt16BE(0) : ''} from the server`);
      return;
    }
    if (this.state !== 'open' || this.sentAt === 0) { bad++; return; } // nothing was asked
    const now = performance.now();
    if (opcode !== 0x1 || !payload.equals(this.payload)) bad++;
    else if (messages < maxMessages) rtt[messages++] = now - this.sentAt;
    tLast = now;
    this.sentAt = 0;
    if (phase === 'run' && now < tEnd && messages < maxMessages) this.send();
    else { this.state = 'finished'; finishedOne(); }
  }

  send() {
    this.seq = (this.seq + 1) % 100000000;
    this.payload.write(String(this.seq).padStart(8, '0'), 0, 'latin1');
    this.sentAt = performance.now();
    this.socket.write(clientFrame(0x1, this.payload));
  }

  // The socket went away (or broke the protocol) before the end of the message phase
  end(reason) {
    if (this.state !== 'open') return;
    this.state = 'ended';
    count((phase === 'ready' ? 'before the first message: ' : '') + reason);
    this.socket.destroy();
    finishedOne();
  }

  onClose() {
    const error = this.error ? `connection ${this.error}` : null;
    if (this.state === 'connecting') this.fail(error || 'closed before a 101');
    else if (this.state === 'open') this.end(error || 'closed by the other side');
    else if (this.state === 'closing') { this.state = 'closed'; unclean++; closedOne(); }
  }
}

// -- the phases ---------------------------------------------------------------------------------

let pendingOpen = nSockets;
const openBegan = performance.now();
const openTimer = setTimeout(() => conns.forEach((c) => c.fail(`no 101 within ${openLimit} s`)),
  openLimit * 1000);

function opened() {
  if (--pendingOpen > 0) return;
  clearTimeout(openTimer);
  phase = 'ready';
  const open = conns.filter((c) => c.state === 'open').length;
  emit({ event: 'open', opened: open, failed: nSockets - open,
    open_ms: performance.now() - openBegan, replicas, reasons });
  if (open === 0) { emit({ event: 'closed', clean: 0, unclean: 0 }); process.exit(0); }
}

let pendingFinish = 0;
let drainTimer = null;
function go() {
  if (phase !== 'ready') return;
  phase = 'run';
  const live = conns.filter((c) => c.state === 'open');
  pendingFinish = live.length;
  t0 = performance.now();
  tEnd = t0 + duration * 1000;
  if (pendingFinish === 0) return done();
  drainTimer = setTimeout(() => {
    // each socket waits for the echo of its last message: one that does not come is an error
    phase = 'drain';
    for (const c of conns) {
      if (c.state === 'open') c.end(`no echo within ${drainLimit} s of the end`);
    }
  }, duration * 1000 + drainLimit * 1000);
  for (const c of live) c.send();
}

function finishedOne() {
  if (phase === 'run' || phase === 'drain') { if (--pendingFinish === 0) done(); }
}

let pendingClose = 0;
let clean = 0;
let unclean = 0;
function done() {
  clearTimeout(drainTimer);
  phase = 'close';
  const elapsed = ((tLast || performance.now()) - t0) / 1000;
  const lat = rtt.subarray(0, messages).sort();
  const pct = (p) => (messages ? lat[Math.min(messages - 1, Math.floor(p * messages))] : null);
  const early = conns.filter((c) => c.state === 'ended').length;
  emit({ event: 'done', messages, elapsed, p50: pct(0.5), p99: pct(0.99), bad, ended: early,
    capped: messages >= maxMessages, reasons });
  const left = conns.filter((c) => c.state === 'finished');
  pendingClose = left.length;
  if (!pendingClose) return closedOne(true);
  for (const c of left) {
    c.state = 'closing';
    c.socket.write(clientFrame(0x8, Buffer.from([0x03, 0xe8]))); // 1000, normal closure
  }
  setTimeout(() => {
    for (const c of conns) {
      if (c.state !== 'closing') continue;
      c.state = 'closed';
      unclean++;
      c.socket.destroy();
    }
    closedOne(true);
  }, CLOSE_LIMIT).unref();
}

let closedSaid = false;
function closedOne(force) {
  if (!force && --pendingClose > 0) return;
  if (closedSaid) return;
  closedSaid = true;
  clean = conns.filter((c) => c.state === 'closed').length - unclean;
  emit({ event: 'closed', clean, unclean });
  for (const c of conns) c.socket.destroy();
  process.exit(0);
}

const stdin = readline.createInterface({ input: process.stdin });
stdin.on('line', (line) => { if (line.trim() === 'go') go(); });
stdin.on('close', () => { // the parent is gone (or gave up) before "go"
  if (phase === 'open' || phase === 'ready') process.exit(3);
});
for (let i = 0; i < nSockets; i++) conns.push(new Conn(i));
