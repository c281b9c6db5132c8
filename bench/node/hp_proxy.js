// Round-robin reverse proxy with node-http-proxy (npm "http-proxy" 1.18.1), the way a Node
// developer would write it (after ../shared/reference/baselines/node/hp_proxy.js), in front of
// the same two replicas as the other configs of bench/bench.py.
// usage: NODE_PATH=<deps>/node_modules node bench/node/hp_proxy.js PORT B1 B2
'use strict';
const http = require('http');
const httpProxy = require('http-proxy');
const port = parseInt(process.argv[2], 10);
const targets = process.argv.slice(3).map((p) => 'http://127.0.0.1:' + parseInt(p, 10));
const agent = new http.Agent({ keepAlive: true, maxSockets: 256 });  // per backend
const proxy = httpProxy.createProxyServer({ agent });
proxy.on('error', (err, req, res) => {  // without a handler http-proxy throws -> process dies
  if (!res.writeHead) return res.destroy();  // an upgrade's: res is the client's socket
  if (!res.headersSent) res.writeHead(502, { 'Content-Type': 'text/plain' });
  res.end('bad gateway\n');
});
let next = 0;
function pick() {
  const target = targets[next];
  next = (next + 1) % targets.length;
  return target;
}
const server = http.createServer((req, res) => proxy.web(req, res, { target: pick() }));
// WebSockets (bench/ws_echo.py), as http-proxy's README relays them: the same round-robin
server.on('upgrade', (req, socket, head) => proxy.ws(req, socket, head, { target: pick() }));
server.keepAliveTimeout = 120000;
server.headersTimeout = 121000;
process.on('SIGTERM', () => process.exit(0));
server.listen(port, '127.0.0.1', () => console.log('http-proxy on 127.0.0.1:' + port + ' -> ' + targets.join(' ')));
