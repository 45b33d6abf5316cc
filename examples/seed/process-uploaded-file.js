// Content block that processes uploaded files
async function processUploadedFile(filePath) {
  try {
    // Read uploaded file
    const fileData = await symposium.readFile(filePath);

    // Process the data (e.g., parse CSV)
    const processedData = processCSV(fileData.data);

    // Save processed results
    const outputPath = `processed/${Date.now()}_results.json`;
    await symposium.writeFile(outputPath, JSON.stringify(processedData));

    // Log the operation
    await symposium.database.query(
      'INSERT INTO file_logs (file_path, processed_at, record_count) VALUES (?, ?, ?)',
      [filePath, Date.now(), processedData.length]
    );

    return { success: true, outputPath, recordCount: processedData.length };
  } catch (error) {
    console.error('File processing failed:', error.message);
    return { success: false, error: error.message };
  }
}
