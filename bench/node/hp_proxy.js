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
  if (res.writeHead && !res.headersSent) res.writeHead(502, { 'Content-Type': 'text/plain' });
  res.end('bad gateway\n');
});
let next = 0;
const server = http.createServer((req, res) => {
  proxy.web(req, res, { target: targets[next] });
  next = (next + 1) % targets.length;
});
server.keepAliveTimeout = 120000;
server.headersTimeout = 121000;
process.on('SIGTERM', () => process.exit(0));
server.listen(port, '127.0.0.1', () => console.log('http-proxy on 127.0.0.1:' + port + ' -> ' + targets.join(' ')));
