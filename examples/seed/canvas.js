// Create a canvas
const canvas = await symposium.canvas.createCanvas(800, 600);
console.log(`Created canvas: ${canvas.canvasId}`);

// Draw on canvas
await symposium.canvas.draw(canvas.canvasId, [
  { type: 'fillRect', x: 10, y: 10, width: 100, height: 100, style: '#ff0000' },
  { type: 'fillText', text: 'Hello World', x: 20, y: 30, style: '#000000' },
  { type: 'beginPath' },
  { type: 'arc', x: 200, y: 200, radius: 50, startAngle: 0, endAngle: Math.PI * 2 },
  { type: 'stroke', style: '#00ff00' }
]);

// Export as image
const imageData = await symposium.canvas.exportImage(canvas.canvasId, 'png');
console.log(`Exported ${imageData.data.length} bytes of PNG data`);
