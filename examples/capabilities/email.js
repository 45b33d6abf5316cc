// Email from the tenant's configured sender (docs/email.md). Without a relay configured
// the platform keeps it in the outbox the admin shows; nothing leaves the machine.
await symposium.writeFile('reports/summary.csv', 'month,total\njan,3\nfeb,5\n');
const sent = await symposium.email.send({
  to: 'team@example.org',
  subject: 'Monthly summary',
  text: 'The summary is attached.',
  html: '<p>The summary is <b>attached</b>.</p>',
  attachments: [{ path: 'reports/summary.csv' }],
});
console.log(`Sent ${sent.data.messageId} to ${sent.data.accepted.join(', ')}`);
export default () => sent.data;
