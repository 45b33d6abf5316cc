// Read a file
const result = await symposium.readFile('data/config.json');
console.log(result.data);

// Write a file
await symposium.writeFile('output/result.txt', 'Hello World');

// List directory
const files = await symposium.listDirectory('uploads');
console.log(files.data);

// Get file info
const info = await symposium.getFileInfo('data/large-file.zip');
console.log(`${info.size} bytes`);

// Check if file exists
const exists = await symposium.fileExists('config/settings.json');
if (exists.data) { /* file exists */ }

// Delete a file
await symposium.deleteFile('temp/cache.tmp');
