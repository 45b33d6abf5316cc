
// Driver (not part of the seed): the transform the seed leaves to the reader, and the call.
function transformData(raw) {
  const items = Array.isArray(raw) ? raw : (raw?.items ?? raw?.data ?? []);
  return items.map((item) => ({ ...item, processed: true }));
}

export default () => dataPipeline();
