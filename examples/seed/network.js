// Enhanced fetch with custom headers
const response = await symposium.network.fetch('https://api.example.com/data', {
  method: 'POST',
  headers: {
    'Authorization': 'Bearer token123',
    'Content-Type': 'application/json'
  },
  body: JSON.stringify({ query: 'test' })
});
console.log(response.data);

// Send webhook
const webhookResult = await symposium.network.sendWebhook(
  'https://webhook.site/xyz',
  {
    event: 'user_action',
    data: { action: 'file_upload', size: 1024 }
  }
);
