// Generate temporary file path
const tempPath = symposium.utils.generateTempPath('.json');
console.log(tempPath); // 'temp/tmp_1640995200000_abc123.json'

// Get current timestamp
const timestamp = symposium.utils.getTimestamp();
console.log(timestamp); // 1640995200000

// Generate unique ID
const uniqueId = symposium.utils.generateId();
console.log(uniqueId); // 'abc123def456'
