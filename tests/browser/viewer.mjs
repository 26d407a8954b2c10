// A viewer on another origin, for the integration tests: serves a page from its
// own port, opens it in headless Chromium (Debian's /usr/bin/chromium) and sends
// the requests of a spec to the proxy with the HTTP clients viewers ship: fetch,
// axios 0.27 and axios 1.x. Prints one JSON line: the results, in spec order.
//
//   node viewer.mjs SPEC.json
//
// SPEC: {"proxy": "http://127.0.0.1:P", "requests": [{"name", "client":
// "fetch"|"axios0"|"axios1", "method"?, "path", "params"?, "headers"?, "body"?}]}
// With fetch, `params` is sent as URLSearchParams (data-filters as one JSON
// string); with axios, as axios' own `params` (its default serializer).
// Each result: {"name", "status", "body", "headers": {...}} or {"name", "error"}.
import { readFileSync } from 'node:fs';
import { createServer } from 'node:http';
import { createRequire } from 'node:module';
import { chromium } from 'playwright-core';

const require = createRequire(import.meta.url);
const spec = JSON.parse(readFileSync(process.argv[2], 'utf8'));
const dist = (pkg, file) => readFileSync(require.resolve(`${pkg}/package.json`).replace('package.json', file));
const files = {
  '/axios0.js': dist('axios0', 'dist/axios.min.js'),
  '/axios1.js': dist('axios1', 'dist/axios.min.js'),
  '/': Buffer.from('<!doctype html><meta charset="utf-8"><title>viewer</title>' +
    '<script src="/axios0.js"></script><script>window.axios0 = axios;</script>' +
    '<script src="/axios1.js"></script><script>window.axios1 = axios;</script>'),
};

const server = createServer((req, res) => {
  const body = files[req.url];
  res.writeHead(body ? 200 : 404, { 'Content-Type': req.url === '/' ? 'text/html' : 'text/javascript' });
  res.end(body || '');
});
await new Promise((r) => server.listen(0, '127.0.0.1', r));
const origin = `http://127.0.0.1:${server.address().port}`;

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
    '--disable-background-networking', '--disable-component-update', '--disable-sync'],
});
try {
  const page = await browser.newPage();
  await page.goto(origin + '/');
  const results = [];
  for (const r of spec.requests) {
    results.push(await page.evaluate(async ({ proxy, r }) => {
      const url = proxy + r.path;
      const method = r.method || 'GET';
      try {
        if (r.client === 'fetch') {
          const q = new URLSearchParams();
          for (const [k, v] of Object.entries(r.params || {})) {
            q.append(k, typeof v === 'string' ? v : JSON.stringify(v));
          }
          const qs = q.toString();
          const resp = await fetch(qs ? `${url}?${qs}` : url, {
            method, headers: r.headers || {}, body: r.body === undefined ? undefined : JSON.stringify(r.body),
          });
          const headers = {};
          resp.headers.forEach((v, k) => { headers[k] = v; });
          return { name: r.name, status: resp.status, body: await resp.text(), headers };
        }
        const ax = window[r.client];
        const resp = await ax.request({
          url, method, params: r.params, headers: r.headers, data: r.body,
          responseType: 'text', transformResponse: [(d) => d], validateStatus: () => true,
        });
        return { name: r.name, status: resp.status, body: resp.data, headers: resp.headers };
      } catch (e) {
        return { name: r.name, error: String(e) };
      }
    }, { proxy: spec.proxy, r }));
  }
  console.log(JSON.stringify(results));
} finally {
  await browser.close();
  server.close();
}
