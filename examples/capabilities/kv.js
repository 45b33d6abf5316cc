// Key-value state between runs (docs/kv.md): a visit counter and a cached value with a TTL.
const visits = await symposium.kv.get('visits');
const count = (visits.data ?? 0) + 1;
await symposium.kv.set('visits', count);
await symposium.kv.set('cache:greeting', { text: 'Hello again', at: new Date().toISOString() }, { ttl: 60 });
const page = await symposium.kv.list({ prefix: 'cache:' });
console.log(`Run number ${count}; cached keys: ${page.data.keys.map((k) => k.key).join(', ')}`);
export default () => ({ visits: count });
