
// Driver (not part of the seed): the helper the seed leaves to the reader, and the call.
function processCSV(text) {
  const [header, ...lines] = text.trim().split('\n');
  const keys = header.split(',');
  return lines.map((line) => Object.fromEntries(line.split(',').map((v, i) => [keys[i], v])));
}

export default (input) => processUploadedFile(input?.path ?? 'uploads/people.csv');
