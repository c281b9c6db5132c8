'use strict';
// nmc demo site: one replica of "nodejs.org" behind the nmc proxy.
// Node.js standard library only (no npm dependencies). See the route list in handle() below.

const http = require('http');
const os = require('os');
const crypto = require('crypto');
const zlib = require('zlib');
const { isUtf8 } = require('buffer');

const PORT = Number(process.env.PORT) || 8080;
// The replica's name goes into a response header, so keep it to printable ASCII.
const REPLICA = String(process.env.NMC_REPLICA || os.hostname()).replace(/[^\x20-\x7e]/g, '?') || 'replica';
const HOSTNAME = os.hostname();
const STARTED = Date.now();

const MiB = 1024 * 1024;
const ECHO_BODY_MAX = MiB; // /echo returns the body itself only up to this size
const WS_MESSAGE_MAX = 64 * MiB; // largest WebSocket message accepted (frames or assembled fragments)
const WS_GUID = '258EAFA5-E914-47DA-95CA-C5AB0DC85B11';
const EMPTY = Buffer.alloc(0);

// One shared, preallocated, never-modified buffer for /big: byte i of the response is (i & 0xff).
const BIG_BUF = Buffer.alloc(MiB);
for (let i = 0; i < BIG_BUF.length; i++) BIG_BUF[i] = i & 0xff;

let shuttingDown = false;
const wsConns = new Set();

function noop() {}

// ---------------------------------------------------------------------------------------------
// small helpers

function sendJson(res, status, obj) {
  const body = JSON.stringify(obj, null, 2) + '\n';
  res.writeHead(status, {
    'Content-Type': 'application/json; charset=utf-8',
    'Content-Length': Buffer.byteLength(body),
    'Cache-Control': 'no-store',
  });
  res.end(body);
}

function sendText(res, status, text, extra) {
  res.writeHead(status, Object.assign({
    'Content-Type': 'text/plain; charset=utf-8',
    'Content-Length': Buffer.byteLength(text),
    'Cache-Control': 'no-store',
  }, extra || {}));
  res.end(text);
}

// Split a request target into path and query. Origin-form ("/a?b") is used as is (so "//x" stays a
// path); absolute-form ("http://h/a?b") is parsed as a URL. Returns null when unparseable.
function splitTarget(raw) {
  let target = raw || '';
  if (!target.startsWith('/')) {
    try {
      const u = new URL(target);
      target = u.pathname + u.search;
    } catch (e) {
      return null;
    }
  }
  const q = target.indexOf('?');
  return {
    pathname: q === -1 ? target : target.slice(0, q),
    params: new URLSearchParams(q === -1 ? '' : target.slice(q + 1)),
  };
}

// A numeric query parameter: missing -> def; not a number or below min -> NaN (the caller answers
// 400); above max -> max.
function numParam(params, name, def, min, max, integer) {
  const raw = params.get(name);
  if (raw === null || raw === '') return def;
  let v = Number(raw);
  if (!Number.isFinite(v)) return NaN;
  if (integer) v = Math.floor(v);
  if (v < min) return NaN;
  return Math.min(v, max);
}

function formatUptime(seconds) {
  let s = Math.floor(seconds);
  const d = Math.floor(s / 86400); s -= d * 86400;
  const h = Math.floor(s / 3600); s -= h * 3600;
  const m = Math.floor(s / 60); s -= m * 60;
  const parts = [];
  if (d) parts.push(d + 'd');
  if (d || h) parts.push(h + 'h');
  if (d || h || m) parts.push(m + 'm');
  parts.push(s + 's');
  return parts.join(' ');
}

function escapeHtml(s) {
  return String(s).replace(/[&<>"']/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' })[c]);
}

// ---------------------------------------------------------------------------------------------
// routes

function homePage(req, res) {
  const rows = [
    ['Replica', REPLICA],
    ['Hostname', HOSTNAME],
    ['PID', process.pid],
    ['Node.js', process.version],
    ['Uptime', formatUptime(process.uptime())],
    ['Served at', new Date().toISOString()],
  ].map(([k, v]) => `<tr><th>${escapeHtml(k)}</th><td>${escapeHtml(v)}</td></tr>`).join('\n        ');
  const links = [
    ['/healthz', 'health check (JSON)'],
    ['/whoami', 'the request as this replica saw it'],
    ['/echo', 'echo of method, headers and body'],
    ['/stream?n=10&ms=100', 'chunked response, one line every ms'],
    ['/slow?ms=1000', 'answers after a delay'],
    ['/big?mb=10', 'MiB of binary data'],
    ['/status/418', 'any status code'],
    ['/headers?Set-Cookie=a%3D1&Set-Cookie=b%3D2', 'an answer with the headers asked for'],
    ['/ws', 'WebSocket echo'],
  ].map(([href, what]) => `<li><a href="${escapeHtml(href)}"><code>${escapeHtml(href)}</code></a> &mdash; ${escapeHtml(what)}</li>`)
    .join('\n        ');
  const html = `<!doctype html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <meta name="viewport" content="width=device-width, initial-scale=1">
  <title>nodejs.org &middot; ${escapeHtml(REPLICA)}</title>
  <style>
    :root { color-scheme: light dark; --accent: #3c873a; --muted: #6b7280; --card: #ffffff; --bg: #f3f5f7; }
    @media (prefers-color-scheme: dark) { :root { --card: #1b1f24; --bg: #0f1215; --muted: #9aa4af; } }
    * { box-sizing: border-box; }
    body { margin: 0; min-height: 100vh; display: flex; align-items: center; justify-content: center;
           font: 16px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, Helvetica, Arial, sans-serif; background: var(--bg); }
    main { width: min(40rem, 92vw); background: var(--card); border-radius: 14px; padding: 2rem 2.25rem;
           box-shadow: 0 1px 2px rgba(0,0,0,.06), 0 8px 28px rgba(0,0,0,.08); border-top: 6px solid var(--accent); }
    h1 { margin: 0 0 .25rem; font-size: 1.6rem; }
    .sub { margin: 0 0 1.5rem; color: var(--muted); }
    .replica { display: inline-block; padding: .1rem .6rem; border-radius: 999px; background: var(--accent); color: #fff;
               font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; font-size: .95em; }
    table { width: 100%; border-collapse: collapse; margin-bottom: 1.5rem; }
    th, td { text-align: left; padding: .45rem .25rem; border-bottom: 1px solid rgba(127,127,127,.2); }
    th { width: 8rem; color: var(--muted); font-weight: 500; }
    td { font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; word-break: break-all; }
    h2 { font-size: 1rem; margin: 0 0 .5rem; }
    ul { margin: 0; padding-left: 1.2rem; }
    a { color: var(--accent); }
  </style>
</head>
<body>
  <main>
    <h1>Hello from <span class="replica">${escapeHtml(REPLICA)}</span></h1>
    <p class="sub">This page was served by one replica of the nmc demo site. Reload to see the proxy rotate.</p>
    <table>
        ${rows}
    </table>
    <h2>Endpoints</h2>
    <ul>
        ${links}
    </ul>
  </main>
</body>
</html>
`;
  res.writeHead(200, {
    'Content-Type': 'text/html; charset=utf-8',
    'Content-Length': Buffer.byteLength(html),
    'Cache-Control': 'no-store',
  });
  res.end(html);
}

function whoami(req, res) {
  sendJson(res, 200, {
    hostname: HOSTNAME,
    replica: REPLICA,
    pid: process.pid,
    method: req.method,
    url: req.url,
    httpVersion: req.httpVersion,
    headers: req.headers,
    rawHeaders: req.rawHeaders,
    remoteAddress: req.socket.remoteAddress,
  });
}

// The body is streamed through sha256; it is kept only while it is at most ECHO_BODY_MAX bytes.
function echo(req, res) {
  const hash = crypto.createHash('sha256');
  let length = 0;
  let parts = [];
  req.on('data', (chunk) => {
    hash.update(chunk);
    length += chunk.length;
    if (parts !== null) {
      if (length > ECHO_BODY_MAX) parts = null;
      else parts.push(chunk);
    }
  });
  req.on('end', () => {
    if (res.destroyed) return;
    const out = {
      method: req.method,
      url: req.url,
      httpVersion: req.httpVersion,
      headers: req.headers,
      rawHeaders: req.rawHeaders,
      bodyLength: length,
      bodySha256: hash.digest('hex'),
    };
    if (parts !== null) out.body = Buffer.concat(parts, length).toString('utf8');
    sendJson(res, 200, out);
  });
}

function stream(req, res, params) {
  const n = numParam(params, 'n', 10, 0, 100000, true);
  const ms = numParam(params, 'ms', 100, 0, 60000, true);
  if (Number.isNaN(n) || Number.isNaN(ms)) return sendText(res, 400, 'n and ms must be non-negative numbers\n');
  // No Content-Length: HTTP/1.1 responses are sent with Transfer-Encoding: chunked.
  res.writeHead(200, {
    'Content-Type': 'text/plain; charset=utf-8',
    'Cache-Control': 'no-store',
    'X-Accel-Buffering': 'no',
  });
  if (req.method === 'HEAD' || n === 0) return res.end();
  let i = 0;
  let timer = null;
  res.on('close', () => clearTimeout(timer));
  const next = () => {
    timer = null;
    if (res.destroyed || res.writableEnded) return;
    const ok = res.write(`chunk ${i}\n`);
    i += 1;
    if (i >= n) return res.end();
    if (ms > 0) timer = setTimeout(next, ms);
    else if (!ok) res.once('drain', next);
    else setImmediate(next);
  };
  next();
}

function slow(req, res, params) {
  const ms = numParam(params, 'ms', 1000, 0, 600000, true);
  if (Number.isNaN(ms)) return sendText(res, 400, 'ms must be a non-negative number\n');
  const timer = setTimeout(() => {
    if (!res.destroyed) sendText(res, 200, `slept ${ms} ms\n`);
  }, ms);
  res.on('close', () => clearTimeout(timer));
}

function big(req, res, params) {
  const mb = numParam(params, 'mb', 10, 0, 4096, false);
  if (Number.isNaN(mb)) return sendText(res, 400, 'mb must be a non-negative number\n');
  const total = Math.floor(mb * MiB);
  res.writeHead(200, {
    'Content-Type': 'application/octet-stream',
    'Content-Length': total,
    'Cache-Control': 'no-store',
  });
  if (req.method === 'HEAD' || total === 0) return res.end();
  let left = total;
  const pump = () => {
    while (left > 0) {
      if (res.destroyed || res.writableEnded) return; // client went away
      const chunk = left >= BIG_BUF.length ? BIG_BUF : BIG_BUF.subarray(0, left);
      left -= chunk.length;
      if (!res.write(chunk) && left > 0) {
        res.once('drain', pump); // backpressure: at most one buffer's worth queued
        return;
      }
    }
    res.end();
  };
  pump();
}

function status(req, res, codeText) {
  const code = /^\d{3}$/.test(codeText) ? Number(codeText) : NaN;
  if (!(code >= 200 && code <= 599)) {
    return sendText(res, 400, `invalid status code: ${codeText} (use 200-599)\n`);
  }
  if (code === 204 || code === 304) {
    res.writeHead(code);
    return res.end();
  }
  sendText(res, code, `${code} ${http.STATUS_CODES[code] || 'Unknown'}\n`);
}

// /headers?Name=value&Name=value2: answers with these headers, each name's values in order with
// their repeats (relay tests of answer headers). Content-Encoding=gzip gzips the body; _status=302
// sets the status code (200 by default).
const HEADER_NAME = /^[!#$%&'*+.^_`|~0-9A-Za-z-]+$/;
const GZIPPED = zlib.gzipSync(Buffer.from('hello, compressed world\n'));

function headers(req, res, params) {
  req.resume();
  const asked = { 'X-Replica': [REPLICA] }; // name -> values: repeats kept, in order
  let body = Buffer.from('headers as asked\n');
  let code = 200;
  for (const [name, value] of params) {
    if (name === '_status') { // the answer's status code, e.g. _status=302&Location=/echo
      code = /^[2-5]\d\d$/.test(value) && value !== '204' && value !== '304' ? Number(value) : 200;
      continue;
    }
    if (!HEADER_NAME.test(name) || /[\r\n\0]/.test(value)) {
      return sendText(res, 400, `invalid header: ${JSON.stringify(name)}\n`);
    }
    if (/^(content-length|transfer-encoding)$/i.test(name)) continue; // the framing is ours
    if (/^content-encoding$/i.test(name) && /^gzip$/i.test(value)) body = GZIPPED;
    (asked[name] = asked[name] || []).push(value);
  }
  asked['Content-Length'] = [String(body.length)];
  res.removeHeader('X-Replica');
  for (const [name, values] of Object.entries(asked)) res.setHeader(name, values);
  res.writeHead(code);
  res.end(body);
}

function crash(req, res) {
  req.resume(); // read (and drop) any request body so closing the socket cannot reset the reply
  res.on('finish', () => {
    console.log(`exiting with code 1: /crash requested (pid ${process.pid})`);
    process.exit(1);
  });
  sendText(res, 200, 'crashing\n', { Connection: 'close' });
}

function handle(req, res) {
  req.on('error', noop);
  res.on('error', noop);
  res.setHeader('X-Replica', REPLICA);
  if (shuttingDown) res.setHeader('Connection', 'close');
  const t = splitTarget(req.url);
  if (t === null) return sendJson(res, 400, { error: 'bad request target', url: req.url });
  const { pathname, params } = t;
  if (pathname === '/') return homePage(req, res);
  if (pathname === '/healthz') return sendJson(res, 200, { status: 'ok', replica: REPLICA });
  if (pathname === '/whoami') return whoami(req, res);
  if (pathname === '/echo') return echo(req, res);
  if (pathname === '/stream') return stream(req, res, params);
  if (pathname === '/slow') return slow(req, res, params);
  if (pathname === '/big') return big(req, res, params);
  if (pathname.startsWith('/status/')) return status(req, res, pathname.slice('/status/'.length));
  if (pathname === '/crash') return crash(req, res);
  if (pathname === '/headers') return headers(req, res, params);
  if (pathname === '/ws') {
    return sendJson(res, 426, { error: 'this is a WebSocket endpoint: send a WebSocket upgrade', url: req.url });
  }
  sendJson(res, 404, { error: 'not found', url: req.url });
}

// ---------------------------------------------------------------------------------------------
// WebSocket echo (RFC 6455)

function rawReply(socket, status, text) {
  const body = text ? text + '\n' : '';
  if (socket.writable) {
    socket.end(`HTTP/1.1 ${status} ${http.STATUS_CODES[status]}\r\n` +
      `X-Replica: ${REPLICA}\r\nConnection: close\r\nContent-Type: text/plain; charset=utf-8\r\n` +
      `Content-Length: ${Buffer.byteLength(body)}\r\n\r\n${body}`);
  }
  socket.destroy();
}

class WsConn {
  constructor(socket) {
    this.socket = socket;
    this.chunks = []; // received, not yet parsed
    this.buffered = 0;
    this.state = 0; // 0 header, 1 extended length, 2 mask, 3 payload
    this.fin = false;
    this.opcode = 0;
    this.extLen = 0;
    this.payloadLen = 0;
    this.mask = null;
    this.fragOpcode = 0; // opcode of the fragmented message in progress, 0 = none
    this.frags = [];
    this.fragLen = 0;
    this.closing = false;
  }

  onData(data) {
    if (this.closing) return;
    this.chunks.push(data);
    this.buffered += data.length;
    try {
      this.parse();
    } catch (e) {
      this.fail(1011, 'internal error');
    }
  }

  take(n) {
    if (n === 0) return EMPTY;
    const first = this.chunks[0];
    this.buffered -= n;
    if (first.length === n) { this.chunks.shift(); return first; }
    if (first.length > n) { this.chunks[0] = first.subarray(n); return first.subarray(0, n); }
    const out = Buffer.allocUnsafe(n);
    let off = 0;
    while (off < n) {
      const c = this.chunks[0];
      const k = Math.min(c.length, n - off);
      c.copy(out, off, 0, k);
      off += k;
      if (k === c.length) this.chunks.shift();
      else this.chunks[0] = c.subarray(k);
    }
    return out;
  }

  parse() {
    while (!this.closing) {
      if (this.state === 0) {
        if (this.buffered < 2) return;
        const h = this.take(2);
        this.fin = (h[0] & 0x80) !== 0;
        this.opcode = h[0] & 0x0f;
        const masked = (h[1] & 0x80) !== 0;
        const len7 = h[1] & 0x7f;
        if (h[0] & 0x70) return this.fail(1002, 'reserved bits set');
        if (!masked) return this.fail(1002, 'client frames must be masked');
        if (this.opcode >= 0x8) {
          if (this.opcode > 0xa) return this.fail(1002, 'unknown opcode');
          if (!this.fin) return this.fail(1002, 'fragmented control frame');
          if (len7 > 125) return this.fail(1002, 'control frame too long');
        } else if (this.opcode > 0x2) {
          return this.fail(1002, 'unknown opcode');
        } else if (this.opcode === 0x0 && this.fragOpcode === 0) {
          return this.fail(1002, 'continuation without a message');
        } else if (this.opcode !== 0x0 && this.fragOpcode !== 0) {
          return this.fail(1002, 'new message inside a fragmented one');
        }
        if (len7 === 126) { this.extLen = 2; this.state = 1; }
        else if (len7 === 127) { this.extLen = 8; this.state = 1; }
        else { this.payloadLen = len7; this.state = 2; }
      } else if (this.state === 1) {
        if (this.buffered < this.extLen) return;
        const b = this.take(this.extLen);
        if (this.extLen === 2) {
          this.payloadLen = b.readUInt16BE(0);
        } else {
          const hi = b.readUInt32BE(0);
          if (hi !== 0) return this.fail(1009, 'message too big');
          this.payloadLen = b.readUInt32BE(4);
        }
        this.state = 2;
      } else if (this.state === 2) {
        if (this.payloadLen + (this.opcode === 0 ? this.fragLen : 0) > WS_MESSAGE_MAX) {
          return this.fail(1009, 'message too big');
        }
        if (this.buffered < 4) return;
        this.mask = this.take(4);
        this.state = 3;
      } else {
        if (this.buffered < this.payloadLen) return;
        const payload = this.take(this.payloadLen);
        if (payload.length) {
          // In place: take() hands out bytes nothing else refers to.
          const m = this.mask;
          for (let i = 0; i < payload.length; i++) payload[i] ^= m[i & 3];
        }
        this.state = 0;
        this.onFrame(this.fin, this.opcode, payload);
      }
    }
  }

  onFrame(fin, opcode, payload) {
    if (opcode === 0x8) return this.onClose(payload);
    if (opcode === 0x9) return this.send(0xa, payload); // ping -> pong
    if (opcode === 0xa) return; // unsolicited pong
    if (opcode !== 0x0) {
      if (fin) return this.deliver(opcode, payload);
      this.fragOpcode = opcode;
      this.frags = [payload];
      this.fragLen = payload.length;
      return;
    }
    this.frags.push(payload);
    this.fragLen += payload.length;
    if (fin) {
      const whole = Buffer.concat(this.frags, this.fragLen);
      const op = this.fragOpcode;
      this.fragOpcode = 0;
      this.frags = [];
      this.fragLen = 0;
      this.deliver(op, whole);
    }
  }

  deliver(opcode, payload) {
    if (opcode === 0x1 && !isUtf8(payload)) return this.fail(1007, 'text message is not valid UTF-8');
    this.send(opcode, payload);
  }

  onClose(payload) {
    if (payload.length === 1) return this.fail(1002, 'bad close frame');
    let reply = EMPTY;
    if (payload.length >= 2) {
      const code = payload.readUInt16BE(0);
      const valid = (code >= 1000 && code <= 1003) || (code >= 1007 && code <= 1011) || (code >= 3000 && code <= 4999);
      if (!valid) return this.fail(1002, 'bad close code');
      if (!isUtf8(payload.subarray(2))) return this.fail(1007, 'close reason is not valid UTF-8');
      reply = payload.subarray(0, 2); // echo the status code
    }
    this.closeWith(reply);
  }

  closePayload(code, reason) {
    const r = Buffer.from(reason || '', 'utf8');
    const b = Buffer.allocUnsafe(2 + r.length);
    b.writeUInt16BE(code, 0);
    r.copy(b, 2);
    return b;
  }

  fail(code, reason) {
    this.closeWith(this.closePayload(code, reason));
  }

  // Send a close frame, end our side, and make sure the socket goes away soon even if the peer lingers.
  closeWith(payload) {
    if (this.closing) return;
    this.closing = true;
    this.chunks = [];
    this.buffered = 0;
    this.frags = [];
    this.send(0x8, payload);
    this.socket.end();
    setTimeout(() => this.socket.destroy(), 1000).unref();
  }

  goingAway() {
    this.fail(1001, 'server shutting down');
  }

  send(opcode, payload) {
    const s = this.socket;
    if (!s.writable) return;
    const len = payload.length;
    let header;
    if (len < 126) {
      header = Buffer.from([0x80 | opcode, len]);
    } else if (len < 65536) {
      header = Buffer.allocUnsafe(4);
      header[0] = 0x80 | opcode; header[1] = 126;
      header.writeUInt16BE(len, 2);
    } else {
      header = Buffer.allocUnsafe(10);
      header[0] = 0x80 | opcode; header[1] = 127;
      header.writeUInt32BE(Math.floor(len / 0x100000000), 2);
      header.writeUInt32BE(len >>> 0, 6);
    }
    s.cork();
    s.write(header);
    const ok = s.write(payload);
    s.uncork();
    if (!ok && !this.closing) {
      // backpressure: stop reading until the peer has taken what we echoed
      s.pause();
      s.once('drain', () => s.resume());
    }
  }
}

function onUpgrade(req, socket, head) {
  socket.on('error', noop);
  const t = splitTarget(req.url);
  const upgrade = String(req.headers.upgrade || '').toLowerCase();
  if (upgrade !== 'websocket') return rawReply(socket, 400, 'only WebSocket upgrades are supported');
  if (t === null || t.pathname !== '/ws') return rawReply(socket, 404, 'no WebSocket endpoint here: use /ws');
  const key = req.headers['sec-websocket-key'];
  if (req.method !== 'GET' || req.httpVersion === '1.0' ||
      typeof key !== 'string' || !/^[A-Za-z0-9+/]{22}==$/.test(key) ||
      req.headers['sec-websocket-version'] !== '13') {
    return rawReply(socket, 400, 'bad WebSocket handshake');
  }
  if (shuttingDown) return rawReply(socket, 503, 'shutting down');
  const accept = crypto.createHash('sha1').update(key + WS_GUID).digest('base64');
  socket.setTimeout(0);
  socket.setNoDelay(true);
  socket.write('HTTP/1.1 101 Switching Protocols\r\n' +
    'Upgrade: websocket\r\nConnection: Upgrade\r\n' +
    `Sec-WebSocket-Accept: ${accept}\r\nX-Replica: ${REPLICA}\r\n\r\n`);
  const conn = new WsConn(socket);
  wsConns.add(conn);
  socket.on('close', () => wsConns.delete(conn));
  socket.on('end', () => socket.end()); // peer closed its side without a close frame
  socket.on('data', (d) => conn.onData(d));
  if (head && head.length) conn.onData(head);
}

// ---------------------------------------------------------------------------------------------
// server

const server = http.createServer(handle);
// The proxy keeps pooled keep-alive connections to replicas; Node's 5 s default idle close races
// with reuse.
server.keepAliveTimeout = 75000;
server.headersTimeout = 76000;

server.on('upgrade', onUpgrade);
server.on('connect', (req, socket) => {
  socket.on('error', noop);
  rawReply(socket, 400, 'CONNECT is not supported');
});
server.on('clientError', (err, socket) => {
  // malformed requests, header overflow, timeouts, resets: answer if we still can, never crash
  if (err.code === 'ECONNRESET' || !socket.writable ||
      (socket._httpMessage && socket._httpMessage.headersSent)) {
    socket.destroy();
    return;
  }
  const code = err.code === 'HPE_HEADER_OVERFLOW' ? 431
    : err.code === 'ERR_HTTP_REQUEST_TIMEOUT' ? 408 : 400;
  rawReply(socket, code, '');
});
server.on('error', (err) => {
  console.log(`server error: ${err.message}; exiting`);
  process.exit(1);
});

server.listen(PORT, () => {
  console.log(`listening on :${server.address().port} as ${REPLICA} (pid ${process.pid})`);
});

// In a container node is PID 1 and gets no default signal handlers: stop here, quickly.
function shutdown(signal) {
  if (shuttingDown) {
    console.log(`exiting on second ${signal} (pid ${process.pid})`);
    process.exit(0);
  }
  shuttingDown = true;
  const t0 = Date.now();
  let done = false;
  const finish = (how) => {
    if (done) return;
    done = true;
    console.log(`exiting on ${signal} after ${Date.now() - t0} ms, ${how} (pid ${process.pid}, up ${formatUptime((Date.now() - STARTED) / 1000)})`);
    process.exit(0);
  };
  server.close(() => finish('all connections closed'));
  server.closeIdleConnections();
  for (const c of wsConns) c.goingAway();
  // Connections become idle as in-flight responses finish: keep closing them.
  setInterval(() => server.closeIdleConnections(), 50).unref();
  setTimeout(() => {
    server.closeAllConnections();
    for (const c of wsConns) c.socket.destroy();
    finish('in-flight requests cut off after 2 s');
  }, 2000).unref();
}
process.on('SIGTERM', () => shutdown('SIGTERM'));
process.on('SIGINT', () => shutdown('SIGINT'));
