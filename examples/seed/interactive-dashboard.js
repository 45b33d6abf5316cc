// Content block that creates interactive charts
async function createDashboard(data) {
  // Create canvas for chart
  const canvas = await symposium.canvas.createCanvas(1200, 800);

  // Draw background
  await symposium.canvas.draw(canvas.canvasId, [
    { type: 'fillRect', x: 0, y: 0, width: 1200, height: 800, style: '#f5f5f5' }
  ]);

  // Draw data visualization
  const chartOperations = generateChartOperations(data);
  await symposium.canvas.draw(canvas.canvasId, chartOperations);

  // Export as PNG
  const imageData = await symposium.canvas.exportImage(canvas.canvasId, 'png');

  // Save to file
  const filename = `charts/dashboard_${Date.now()}.png`;
  await symposium.writeFile(filename, imageData.data);

  return { success: true, filename, size: imageData.data.length };
}
