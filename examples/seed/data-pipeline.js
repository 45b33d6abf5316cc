// Content block that fetches data from external APIs and processes it
async function dataPipeline() {
  try {
    // Fetch data from external API
    const apiResponse = await symposium.network.fetch(
      'https://api.example.com/data?limit=1000',
      {
        headers: { 'Authorization': `Bearer ${process.env.API_KEY}` }
      }
    );

    const rawData = apiResponse.data;

    // Process and transform data
    const transformedData = transformData(rawData);

    // Store in database
    await symposium.database.transaction([
      { query: 'DELETE FROM raw_data WHERE source = ?', params: ['api'] },
      { query: 'INSERT INTO raw_data (source, data, processed_at) VALUES (?, ?, ?)',
        params: ['api', JSON.stringify(transformedData), Date.now()] }
    ]);

    // Send notification webhook
    await symposium.network.sendWebhook(
      process.env.WEBHOOK_URL,
      {
        event: 'data_pipeline_complete',
        recordCount: transformedData.length,
        timestamp: Date.now()
      }
    );

    return { success: true, processed: transformedData.length };
  } catch (error) {
    console.error('Data pipeline failed:', error.message);
    return { success: false, error: error.message };
  }
}
