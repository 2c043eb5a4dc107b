// The official Node.js Unleash SDK (unleash-client) against a flagrail server.
// stdin: {"url", "token", "booleans": [keys], "typed": [keys], "tenants": [string|null]}
// stdout: {"booleans": {key: [bool per tenant]}, "typed": {key: [[name, type, value] per tenant]}}
// A tenant null is no context field at all. Exits non-zero if the SDK is not synchronised
// within 20 s or reports an error.
'use strict';
const { initialize } = require('unleash-client');

let input = '';
process.stdin.setEncoding('utf8');
process.stdin.on('data', (chunk) => { input += chunk; });
process.stdin.on('end', () => {
  const job = JSON.parse(input);
  const client = initialize({
    url: job.url,
    appName: 'flagrail-node-agreement',
    customHeaders: { Authorization: job.token },
    disableMetrics: true,
    refreshInterval: 60000,
    storageProvider: new (require('unleash-client').InMemStorageProvider)(),
  });
  const timer = setTimeout(() => { console.error('not synchronised in 20 s'); process.exit(3); }, 20000);
  client.on('error', (err) => { console.error(String(err)); process.exit(4); });
  client.on('synchronized', () => {
    clearTimeout(timer);
    const contexts = job.tenants.map((t) => (t === null ? {} : { properties: { tenantId: t } }));
    const out = { booleans: {}, typed: {} };
    for (const key of job.booleans) {
      out.booleans[key] = contexts.map((ctx) => client.isEnabled(key, ctx));
    }
    for (const key of job.typed) {
      out.typed[key] = contexts.map((ctx) => {
        const v = client.getVariant(key, ctx);
        return [v.name, v.payload ? v.payload.type : null, v.payload ? v.payload.value : null];
      });
    }
    process.stdout.write(JSON.stringify(out), () => {
      client.destroy();
      process.exit(0);
    });
  });
});
