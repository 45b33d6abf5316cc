// Realtime channels (docs/realtime.md): tell listening pages that something changed.
// A member's page listens with: new WebSocket(`wss://${location.host}/ws/realtime/<tenant>/orders`)
for (let i = 1; i <= 3; i++) {
  const sent = await symposium.realtime.publish('orders', { order: i, status: 'paid' });
  console.log(`order ${i}:`, sent.data.delivered === undefined ? 'published' : `${sent.data.delivered} listening`);
}
export default () => 'published';
