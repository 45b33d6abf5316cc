// Execute a query
const users = await symposium.database.query(
  'SELECT * FROM users WHERE active = ?',
  [true]
);
console.log(`Found ${users.data.rows.length} active users`);

// Execute transaction
const transactionResult = await symposium.database.transaction([
  {
    query: 'INSERT INTO logs (action, user_id, timestamp) VALUES (?, ?, ?)',
    params: ['file_upload', 123, Date.now()]
  },
  {
    query: 'UPDATE users SET last_activity = ? WHERE id = ?',
    params: [Date.now(), 123]
  }
]);
console.log('Transaction completed:', transactionResult.success);
