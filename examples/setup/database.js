// Creates the tables the seed's database examples expect, with a few rows.
// The same SQL works on both engines a tenant database may have (SQLite, PostgreSQL).
await symposium.database.query(
  'CREATE TABLE IF NOT EXISTS users (id INTEGER PRIMARY KEY, name TEXT, active BOOLEAN, last_activity BIGINT)'
);
await symposium.database.query(
  'CREATE TABLE IF NOT EXISTS logs (action TEXT, user_id INTEGER, timestamp BIGINT)'
);
await symposium.database.query(
  'CREATE TABLE IF NOT EXISTS file_logs (file_path TEXT, processed_at BIGINT, record_count INTEGER)'
);
await symposium.database.query(
  'CREATE TABLE IF NOT EXISTS raw_data (source TEXT, data TEXT, processed_at BIGINT)'
);
const existing = await symposium.database.query('SELECT COUNT(*) AS n FROM users', []);
if (Number(existing.data.rows[0].n) === 0) {
  await symposium.database.transaction([
    { query: 'INSERT INTO users (id, name, active) VALUES (?, ?, ?)', params: [123, 'Ada', true] },
    { query: 'INSERT INTO users (id, name, active) VALUES (?, ?, ?)', params: [124, 'Grace', true] },
    { query: 'INSERT INTO users (id, name, active) VALUES (?, ?, ?)', params: [125, 'Linus', false] },
  ]);
}
console.log('Database ready');
